# CPU image of the project; runs the offline demo by default.
#   docker build -t idefics2-recipe . && docker run --rm idefics2-recipe
FROM python:3.11-slim
WORKDIR /app
# torch first, from the CPU index: PyPI's default torch wheel for Linux is the multi-GB CUDA build.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY . .
RUN pip install --no-cache-dir -e . \
 && pip install --no-cache-dir --force-reinstall --no-deps fasttext-community==0.11.9  # see scripts/setup.sh
CMD ["python", "-m", "pipelines.demo", "--output", "/tmp/demo"]

"""The instruction phrasings the formatters draw from, one seeded choice per row.

The Cauldron's prompts (HuggingFaceM4/the_cauldron rows, and the Idefics2 paper's appendix A.3.1 for the brevity
hint "Give a very brief answer.") vary the wording of the same instruction so a model does not learn one string.
"""

BRIEF = (
    "Give a very brief answer.",
    "Answer briefly.",
    "Keep it brief.",
    "Short answer required.",
    "Concise answer only.",
    "Quick response, please.",
    "Be succinct.",
    "Write a very short answer.",
)

YES_NO = ("Answer yes or no.",)

COUNT = (
    "Answer with a number.",
    "Give the count as a number.",
    "Answer with the number only.",
)

CAPTION = (
    "Describe this image.",
    "What is shown in this image?",
    "Write a caption for this image.",
    "Give a detailed description of this image.",
    "Describe what you see.",
    "Provide a description of the image.",
)

TRANSCRIBE = (
    "Transcribe the text in this image.",
    "What is written in this image?",
    "Read the text in the image.",
    "Write out the text shown in the image.",
)

DOCUMENT = (
    "Answer with a word or a short phrase from the document.",
    "Give a very brief answer.",
    "Answer briefly.",
)

REASON = (
    "Explain your reasoning, then give the answer.",
    "Think step by step, then answer.",
    "Show your work before the final answer.",
)

TO_CODE = {
    "html": (
        "Generate the HTML code of this web page.",
        "Write the HTML and CSS that render this screenshot.",
        "Convert this screenshot into HTML code.",
    ),
    "tikz": (
        "Write the TikZ code that draws this figure.",
        "Generate the LaTeX TikZ code for this figure.",
    ),
}

DIFFERENCES = (
    "What are the differences between these two images?",
    "Spot the differences between the two images.",
    "List what changed between the first and the second image.",
)

MC_TEMPLATE = "Question: {question}\nChoices:\n{choices}\nAnswer with the letter."  # the paper's A.3.1
MC_ANSWER = "Answer: {letter}"

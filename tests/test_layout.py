from datatrove.data import Document, Media, MediaType

from filters.layout import layout_problem, merge_consecutive_texts, remove_images, remove_images_or_document
from filters.structure import InterleavedStructureFilter


def make_doc(texts, n_images):
    media = [Media(id=str(i), type=MediaType.IMAGE, url=f"https://x.example/{i}.jpg") for i in range(n_images)]
    return Document(text="", id="d", media=media, metadata={"texts": list(texts)})


def test_layout_rules():
    assert layout_problem(["u", None], [None, "t"]) is None
    assert layout_problem(["u"], [None, "t"]) == "length_mismatch"
    assert layout_problem(["u", "v"], ["t", None]) == "text_and_image_at_one_position"
    assert layout_problem([None, "u"], [None, "t"]) == "empty_position"
    assert layout_problem(None, ["t"]) == "not_a_list"


def test_merge_consecutive_texts_keeps_images_in_place():
    assert merge_consecutive_texts(["a", "b", None, "c", None, None, "d", "e"]) == ["a\n\nb", None, "c", None,
                                                                                   None, "d\n\ne"]


def test_remove_images_updates_media_and_layout_together():
    doc = make_doc(["a", None, "b", None, "c", None], 3)
    remove_images(doc, [1])
    assert [m.url for m in doc.media] == ["https://x.example/0.jpg", "https://x.example/2.jpg"]
    assert doc.metadata["texts"] == ["a", None, "b\n\nc", None]


def test_structure_filter_reasons():
    step = InterleavedStructureFilter()
    assert step.filter(make_doc(["a", None], 1)) is True
    assert step.filter(make_doc([None], 1)) == (False, "no_text")
    assert step.filter(make_doc(["a"], 0)) == (False, "no_image")
    broken = Document(text="", id="x", metadata={"layout_error": "length_mismatch"})
    assert step.filter(broken) == (False, "length_mismatch")
    merged = make_doc(["a", "b", None], 1)
    assert step.filter(merged) is True and merged.metadata["texts"] == ["a\n\nb", None]


def test_removing_no_image_keeps_even_a_document_without_images():
    text_only = make_doc(["a"], 0)
    assert remove_images_or_document(text_only, [], "all_images_opted_out") is True
    doc = make_doc(["a", None], 1)
    assert remove_images_or_document(doc, [0], "gone") == (False, "gone")

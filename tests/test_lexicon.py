from __future__ import annotations

from pathlib import Path

import pytest

from tmws._native import stemmed_words
from tmws.errors import PatternConfigError
from tmws.lexicon import RoutingLexicon, TypoCorrector, shipped_lexicon_path


def test_inflections_meet_at_their_stem() -> None:
    lexicon = RoutingLexicon()
    assert lexicon.normalize("Configured the Memories") == lexicon.normalize(
        "configure the memory")


def test_the_longest_phrase_wins_and_inflected_variants_match() -> None:
    lexicon = RoutingLexicon({"store": ["note", "keep in mind"], "summarize": ["roll up"]})
    assert lexicon.normalize("Keep in mind: rolling up the notes") == \
        "store summar the store"
    # Words of a phrase apart are not the phrase.
    assert lexicon.normalize("keep it in mind") == "keep it in mind"


def test_a_variant_of_two_canonicals_is_an_error_naming_the_file(tmp_path: Path) -> None:
    extra = tmp_path / "mine.yaml"
    extra.write_text("synonyms:\n  recall: [jot down]\n")
    with pytest.raises(PatternConfigError, match=r"mine\.yaml.*'jot down'.*already"):
        RoutingLexicon.shipped(extra)


@pytest.mark.parametrize(("text", "problem"), [
    ("- a list\n", "must be a mapping"),
    ("synonyms: {store: note}\n", "synonyms must map"),
    ("synonyms: {two words: [x]}\n", "must be one word"),
    ("synonyms: {store: ['???']}\n", "1 to 6 words"),
    ("off_topic: [1, 2]\n", "off_topic must be a list of strings"),
    ("synonym: {}\n", "unknown key"),
    ("synonyms: [\n", "invalid YAML"),
])
def test_a_bad_lexicon_file_names_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PatternConfigError, match=problem) as caught:
        RoutingLexicon.load(path)
    assert str(path) in str(caught.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(PatternConfigError, match="cannot read"):
        RoutingLexicon.load(tmp_path / "absent.yaml")


def test_an_extension_adds_synonyms_and_off_topic(tmp_path: Path) -> None:
    extra = tmp_path / "team.yaml"
    extra.write_text("synonyms:\n  deploy: [ship it]\noff_topic: [order lunch for the team]\n")
    lexicon = RoutingLexicon.shipped(extra)
    assert lexicon.normalize("ship it") == "deploy"
    assert "order lunch for the team" in lexicon.off_topic
    assert set(RoutingLexicon.shipped().off_topic) < set(lexicon.off_topic)
    assert len(lexicon) > len(RoutingLexicon.shipped())


def test_the_shipped_lexicon_loads_and_knows_the_domain() -> None:
    lexicon = RoutingLexicon.load(shipped_lexicon_path())
    assert len(lexicon) >= 100 and len(lexicon.off_topic) >= 50
    assert lexicon.normalize("jot down") == lexicon.normalize("store")


@pytest.mark.parametrize(("typo", "term"), [
    ("summraize", "summarize"),  # swap
    ("contarst", "contrast"),  # swap
    ("recomend", "recommend"),  # deletion
    ("configgure", "configure"),  # insertion
    ("analyxe", "analyze"),  # substitution
])
def test_a_typo_one_edit_from_a_term_is_corrected(typo: str, term: str) -> None:
    corrector = TypoCorrector({"summarize": 1, "contrast": 1, "recommend": 1,
                               "configure": 1, "analyze": 1})
    assert corrector.correct(f"Please {typo} it") == f"please {term} it"


def test_known_short_and_distant_words_stay() -> None:
    corrector = TypoCorrector({"shopping": 1, "recent": 1, "share": 1},
                              known={"shipping": 1})
    # Known to the examples, two edits away, or a short word a substitution away from a
    # term (often a real word: "shark").
    assert corrector.correct("shipping rcnet xyzzyx shark") == "shipping rcnet xyzzyx shark"
    assert corrector.correct("recnet") == "recent"


@pytest.mark.parametrize(("typo", "term", "substituted"), [
    ("lable", "label", "labek"), ("hihg", "high", "hogh"), ("stroe", "store", "stora")])
def test_a_short_word_is_corrected_for_swapped_letters_only(typo: str, term: str,
                                                            substituted: str) -> None:
    corrector = TypoCorrector({"label": 1, "high": 1, "store": 1})
    assert corrector.correct(typo) == term
    assert corrector.correct(substituted) == substituted


def test_an_inflection_of_a_term_is_not_a_typo() -> None:
    corrector = TypoCorrector({"count": 1, "configure": 1})
    assert corrector.correct("counts configured") == "counts configured"


def test_a_left_out_text_does_not_vouch_for_its_own_words() -> None:
    # "sumary" is known only because one text (the one left out) uses it.
    corrector = TypoCorrector({"summary": 1}, known={"sumary": 1, "kafka": 2})
    assert corrector.correct("sumary of kafka") == "sumary of kafka"
    left_out = "sumary of kafka lag"
    assert corrector.correct("sumary of kafka", left_out=left_out) == "summary of kafka"
    assert corrector.repair("Sumary of Kafka!", left_out=left_out) == "summary of Kafka!"


def test_repair_corrects_in_place_and_keeps_the_rest() -> None:
    corrector = TypoCorrector({"install": 1, "recent": 1})
    assert corrector.repair("Please instal numpy, now!") == "Please install numpy, now!"
    assert corrector.repair("  recnet: changes? ") == "  recent: changes? "
    assert corrector.repair("nothing to fix here") == "nothing to fix here"


def test_the_lexicon_s_misspellings_are_spellings_of_their_word(tmp_path: Path) -> None:
    path = tmp_path / "lexicon.yaml"
    path.write_text("synonyms:\n  remember: [remeber, rememeber, memorize]\n"
                    "  recall: [recal, retrieve]\n"
                    "  summarize: [summaries, sumarize]\n  install: [reinstall]\n"
                    "  health: [healthy, helth]\n")
    spellings = RoutingLexicon.load(path).spellings
    # "recal" stems like "recall": nothing for stage 2 to map, still a spelling. Two edits
    # away ("summaries", "reinstall") or a letter added at the end ("healthy"): a word.
    assert spellings == {"remeber": "remember", "rememeber": "remember", "recal": "recall",
                         "sumarize": "summarize", "helth": "health"}
    assert RoutingLexicon.shipped().spellings["configre"] == "configure"


def test_a_listed_misspelling_is_corrected_even_when_known_or_short() -> None:
    # Known words are never corrected, and 4-5 letter words only for swapped letters:
    # a misspelling the lexicon lists is the exception.
    corrector = TypoCorrector({"recall": 1}, known={"recal": 3}, spellings={"recal": "recall"})
    assert corrector.repair("recal the notes on dns") == "recall the notes on dns"
    assert TypoCorrector({"recall": 1}, known={"recal": 3}).repair("recal it") == "recal it"


def test_the_more_frequent_term_wins_a_tie() -> None:
    corrector = TypoCorrector({"latest": 1, "lattes": 5})
    assert corrector.correct("lattest") in {"latest", "lattes"}
    assert TypoCorrector({"latest": 9, "lattes": 5}).correct("lattest") == "latest"


def test_stems_come_from_the_rust_core() -> None:
    assert stemmed_words("Configured MEMORIES, n+1") == ["configur", "memori", "n", "1"]
    assert stemmed_words("") == []

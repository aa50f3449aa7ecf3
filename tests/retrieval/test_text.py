"""The one text module: words, stems, content words, sentences, overlap and anchors."""

from retrieval.text import (
    char_ngrams,
    Quantity,
    content_words,
    keywords,
    menu_paths,
    names,
    negated,
    normalise,
    overlap,
    quantities,
    quoted,
    sentences,
    word_ngrams,
    stem,
    urls,
)


def test_content_words_lowercase_drop_stop_words_and_stem():
    assert content_words("How do I RESET the Routers?") == ["reset", "router"]
    assert stem("resetting") == stem("resets") == stem("reset") == "reset"
    assert stem("configured") == stem("configuring") == stem("configure")
    assert stem("batteries") == "battery"
    assert content_words("XJ42 2.4GHz") == ["xj42", "2", "4ghz"]
    # contraction fragments and question filler carry no topic
    assert content_words("Please tell me, is it possible? I don't know") == []
    assert keywords("Could you tell me how the factory reset works?") == ["factory", "reset",
                                                                          "works"]


def test_normalise_ignores_case_punctuation_and_spacing():
    assert normalise("  The TV's  Wi-Fi:\tOFF! ") == "the tv s wi fi off"
    assert normalise("snake_case") == "snake case"


def test_overlap_counts_distinct_content_words_of_the_first_text():
    assert overlap("hold the reset buttons", "Press and hold the Reset button.") == 1.0
    assert overlap("hold reset for four minutes", "hold reset") == 0.5
    assert overlap("the of and", "anything") == 0.0


def test_sentences_keep_enumerations_abbreviations_and_decimals_together():
    text = ("1. Turn off your modem. 2. Connect the WAN port (see p. 4). Wait approx. two "
            "minutes, e.g. for the LED. Speed is 2.4 GHz! Done?\nNext line")
    assert sentences(text) == [
        "1. Turn off your modem.", "2. Connect the WAN port (see p. 4).",
        "Wait approx. two minutes, e.g. for the LED.", "Speed is 2.4 GHz!", "Done?", "Next line",
    ]
    assert sentences("") == []


def test_quantities_read_number_words_and_canonical_units():
    found = quantities("Hold for ten seconds (10 s), then 4 minutes; 2.4GHz, 12 V / 1.5 A, 90%, "
                       "192.168.8.1 at 02:00, 1 to 24 hours, a 10-second press, 1,000 items.")
    assert found == [
        Quantity("10", "second"), Quantity("10", "second"), Quantity("4", "minute"),
        Quantity("2.4", "ghz"), Quantity("12", "v"), Quantity("1.5", "a"),
        Quantity("90", "percent"), Quantity("192.168.8.1"), Quantity("02:00"), Quantity("1"),
        Quantity("24", "hour"), Quantity("10", "second"), Quantity("1000"),
    ]
    # digits inside names and number words inside other words are not quantities
    assert quantities("The AX3000 and someone onerous") == []


def test_quoted_strings_but_not_apostrophes():
    text = "Refer to 'Using the APPS Service.' and press \"Reset\"; don't worry, it's fine."
    assert quoted(text) == ["Using the APPS Service", "Reset"]


def test_menu_paths_as_label_lists():
    assert menu_paths("Settings >General> Network >Open Network Settings> Wireless.") == [
        ["settings", "general", "network", "open network settings", "wireless"]]
    assert menu_paths("In the admin console open Wireless > Basic Settings and click Save.") \
        == [["wireless", "basic settings"]]
    assert menu_paths("Open Wireless > Security.") == [["wireless", "security"]]
    assert menu_paths("No path here.") == []


def test_urls_domains_and_emails():
    assert urls("Visit evil.example.com now, or http://192.168.8.1/admin. Mail bob@x.org.") == [
        "evil.example.com", "http://192.168.8.1/admin", "bob@x.org"]
    assert urls("Press the Reset button. The end.") == []


def test_names_are_capitalised_runs_with_their_ui_noun():
    assert names("Does the TV support Dolby Atmos?") == ["tv", "dolby atmos"]
    assert names("What is Universal remote?") == ["universal remote"]
    assert names("Press the Home button. The Universal Guide app lists content.") == [
        "home button", "universal guide app"]
    # sentence-initial words are capitalised for grammar; all-caps and mixed case still count
    assert names("Select an option. HDMI works. AirPlay is fun.") == ["hdmi", "airplay"]


def test_names_end_at_punctuation_and_are_never_the_pronoun_or_shouting():
    # a list is several names, not one ("hdmi bluetooth" is in no passage)
    assert names("Does the TV support HDMI, Bluetooth and AirPlay?") == [
        "tv", "hdmi", "bluetooth", "airplay"]
    assert names("Does it support Auto Low Latency Mode (ALLM)?") == [
        "auto low latency mode", "allm"]
    # a menu path's ">" does not end a name: the path stays one anchor
    assert names("Open Settings > Picture Mode now.") == ["settings picture mode"]
    # "I" is capitalised by grammar; an all-caps word of 5+ letters is emphasis
    assert names("I opened an app and EVERYTHING is in English, I don't speak English") == [
        "english"]
    assert names("This is the THIRD time I'm writing. The TV keeps switching OFF.") == ["tv"]
    assert names("Plug it into the HDMI ARC port or a USB port.") == ["hdmi arc port", "usb port"]


def test_char_ngrams_pad_each_word_and_keep_short_words_whole():
    assert char_ngrams("Go b0mb!", (2, 3)) == [
        " g", "go", "o ", " go", "go ",
        " b", "b0", "0m", "mb", "b ", " b0", "b0m", "0mb", "mb "]
    # " a " is no longer than 3: its padded whole, once, for 3 and 4 together.
    assert char_ngrams("A", (2, 3, 4)) == [" a", "a ", " a "]


def test_word_ngrams_are_the_words_then_neighbouring_pairs():
    assert word_ngrams("Reset MY password!") == ["reset", "my", "password", "reset my",
                                                 "my password"]
    assert word_ngrams("one") == ["one"] and word_ngrams("") == []


def test_char_ngrams_of_a_misspelling_mostly_match_the_word():
    word, slip = set(char_ngrams("explosive")), set(char_ngrams("expolsive"))
    assert len(word & slip) / len(word) > 0.4  # one swap keeps 8 of 17
    assert not set(char_ngrams("explosive")) & set(char_ngrams("quiz"))


def test_clauses_split_at_punctuation_and_turning_conjunctions():
    from retrieval.text import clauses

    assert clauses("To reset it, hold Reset (10 s); it restarts, but slowly.") == [
        "To reset it", "hold Reset", "10 s", "it restarts", "slowly"]
    assert clauses("Everything except Wi-Fi") == ["Everything", "Wi-Fi"]
    assert clauses(" , . ") == []


def test_negated_words_are_the_word_after_a_negation_within_its_clause():
    assert negated("The TV does not support Apple AirPlay.") == {"support"}
    assert negated("It doesn't work without Wi-Fi.") == {"work", "wi"}
    assert negated("If there is no sound, check the cable.") == {"sound"}
    assert negated("If the TV does not turn on, press Power.") == {"turn"}
    assert negated("Press and hold the Reset button.") == set()

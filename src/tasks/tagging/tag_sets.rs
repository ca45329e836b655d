//! Tag sets fixed by the official code (THUDM/P-tuning-v2
//! `tasks/ner/datasets/*.py`, `tasks/srl/datasets/*.py`), in its order: a
//! tag's index is its class.

/// `tasks/ner/datasets/conll2003.py`, `ner_tags` ClassLabel names.
pub(super) const CONLL2003_TAGS: &[&str] = &[
    "O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC",
];

/// `tasks/ner/datasets/conll2004.py`, `ner_tags` ClassLabel names.
pub(super) const CONLL04_TAGS: &[&str] = &[
    "O", "B-Loc", "B-Peop", "B-Org", "B-Other", "I-Loc", "I-Peop", "I-Org", "I-Other",
];

/// `tasks/srl/datasets/conll2005.py`, `tags` ClassLabel names (106; "O" is
/// index 73).
#[rustfmt::skip]
pub(super) const CONLL05_TAGS: &[&str] = &[
    "B-C-AM-TMP", "B-C-AM-DIR", "B-C-A2", "B-R-AM-EXT", "B-C-A0", "I-AM-NEG", "I-AM-ADV",
    "B-C-V", "B-C-AM-MNR", "B-R-A3", "I-AM-TM", "B-V", "B-R-A4", "B-A5", "I-A4", "I-R-AM-LOC",
    "I-C-A1", "B-R-AA", "I-C-A0", "B-C-AM-EXT", "I-C-AM-DIS", "I-C-A5", "B-A0", "B-C-A4",
    "B-C-AM-CAU", "B-C-AM-NEG", "B-AM-NEG", "I-AM-MNR", "I-R-A2", "I-R-AM-TMP", "B-AM",
    "I-R-AM-PNC", "B-AM-LOC", "B-AM-REC", "B-A2", "I-AM-EXT", "I-V", "B-A3", "B-A4", "B-R-A0",
    "I-AM-MOD", "I-C-AM-CAU", "B-R-AM-CAU", "B-A1", "B-R-AM-TMP", "I-R-AM-EXT", "B-C-AM-ADV",
    "B-AM-ADV", "B-R-A2", "B-AM-CAU", "B-R-AM-DIR", "I-A5", "B-C-AM-DIS", "I-C-AM-MNR",
    "B-AM-PNC", "I-C-AM-LOC", "I-R-A3", "I-R-AM-ADV", "I-A0", "B-AM-EXT", "B-R-AM-PNC",
    "I-AM-DIS", "I-AM-REC", "B-C-AM-LOC", "B-R-AM-ADV", "I-AM", "I-AM-CAU", "I-AM-TMP", "I-A1",
    "I-C-A4", "B-R-AM-LOC", "I-C-A2", "B-C-A5", "O", "B-R-AM-MNR", "I-C-A3", "I-R-AM-DIR",
    "I-AM-PRD", "B-AM-TM", "I-A2", "I-AA", "I-AM-LOC", "I-AM-PNC", "B-AM-MOD", "B-AM-DIR",
    "B-R-A1", "B-AM-TMP", "B-AM-MNR", "I-R-A0", "B-AM-PRD", "I-AM-DIR", "B-AM-DIS", "I-C-AM-ADV",
    "I-R-A1", "B-C-A3", "I-R-AM-MNR", "I-R-A4", "I-C-AM-PNC", "I-C-AM-TMP", "I-C-V", "I-A3",
    "I-C-AM-EXT", "B-C-A1", "B-AA", "I-C-AM-DIR", "B-C-AM-PNC",
];

/// `tasks/srl/datasets/conll2012.py`, `CONLL12_LABELS` (116; "O" is index 6).
#[rustfmt::skip]
pub(super) const CONLL12_TAGS: &[&str] = &[
    "B-ARG0", "B-ARGM-MNR", "B-V", "B-ARG1", "B-ARG2", "I-ARG2", "O", "I-ARG1", "B-ARGM-ADV",
    "B-ARGM-LOC", "I-ARGM-LOC", "I-ARG0", "B-ARGM-TMP", "I-ARGM-TMP", "B-ARGM-PRP",
    "I-ARGM-PRP", "B-ARGM-PRD", "I-ARGM-PRD", "B-R-ARGM-TMP", "B-ARGM-DIR", "I-ARGM-DIR",
    "B-ARGM-DIS", "B-ARGM-MOD", "I-ARGM-ADV", "I-ARGM-DIS", "B-R-ARGM-LOC", "B-ARG4",
    "I-ARG4", "B-R-ARG1", "B-R-ARG0", "I-R-ARG0", "B-ARG3", "B-ARGM-NEG", "B-ARGM-CAU",
    "I-ARGM-MNR", "I-R-ARG1", "B-C-ARG1", "I-C-ARG1", "B-ARGM-EXT", "I-ARGM-EXT", "I-ARGM-CAU",
    "I-ARG3", "B-C-ARGM-ADV", "I-C-ARGM-ADV", "B-ARGM-LVB", "B-ARGM-REC", "B-R-ARG3",
    "B-R-ARG2", "B-C-ARG0", "I-C-ARG0", "B-ARGM-ADJ", "B-C-ARG2", "I-C-ARG2", "B-R-ARGM-CAU",
    "B-R-ARGM-DIR", "B-ARGM-GOL", "I-ARGM-GOL", "B-ARGM-DSP", "I-ARGM-ADJ", "I-R-ARG2",
    "I-ARGM-NEG", "B-ARGM-PRR", "B-R-ARGM-ADV", "I-R-ARGM-ADV", "I-R-ARGM-LOC", "B-ARGA",
    "B-R-ARGM-MNR", "I-R-ARGM-MNR", "B-ARGM-COM", "I-ARGM-COM", "B-ARGM-PRX", "I-ARGM-REC",
    "B-R-ARG4", "B-C-ARGM-LOC", "I-C-ARGM-LOC", "I-R-ARGM-DIR", "I-ARGA", "B-C-ARGM-TMP",
    "I-C-ARGM-TMP", "B-C-ARGM-CAU", "I-C-ARGM-CAU", "B-R-ARGM-PRD", "I-R-ARGM-PRD",
    "I-R-ARG3", "B-C-ARG4", "I-C-ARG4", "B-ARGM-PNC", "I-ARGM-PNC", "B-ARG5", "I-ARG5",
    "B-C-ARGM-PRP", "I-C-ARGM-PRP", "B-C-ARGM-MNR", "I-C-ARGM-MNR", "I-R-ARGM-TMP",
    "B-R-ARG5", "I-ARGM-DSP", "B-C-ARGM-DSP", "I-C-ARGM-DSP", "B-C-ARG3", "I-C-ARG3",
    "B-R-ARGM-COM", "I-R-ARGM-COM", "B-R-ARGM-PRP", "I-R-ARGM-PRP", "I-R-ARGM-CAU",
    "B-R-ARGM-GOL", "I-R-ARGM-GOL", "B-R-ARGM-EXT", "I-R-ARGM-EXT", "I-R-ARG4",
    "B-C-ARGM-EXT", "I-C-ARGM-EXT", "I-ARGM-MOD", "B-C-ARGM-MOD", "I-C-ARGM-MOD",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::tagging::read::TagCheck;
    use std::collections::BTreeSet;

    #[test]
    fn official_tag_sets() {
        assert_eq!(CONLL2003_TAGS.len(), 9);
        assert_eq!(CONLL05_TAGS.len(), 106);
        assert_eq!(CONLL12_TAGS.len(), 116);
        assert_eq!(CONLL05_TAGS.iter().position(|t| *t == "O"), Some(73));
        assert_eq!(CONLL12_TAGS.iter().position(|t| *t == "O"), Some(6));
        for set in [CONLL2003_TAGS, CONLL04_TAGS, CONLL05_TAGS, CONLL12_TAGS] {
            let distinct: BTreeSet<_> = set.iter().collect();
            assert_eq!(distinct.len(), set.len());
            for t in set {
                TagCheck::Iob2.check(t).unwrap();
            }
        }
    }
}

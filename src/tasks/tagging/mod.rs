//! Sequence labeling: named-entity recognition and semantic role labeling,
//! read and tokenized as the official P-Tuning v2 code does
//! (THUDM/P-tuning-v2: `tasks/ner/dataset.py`, `tasks/ner/datasets/*.py`,
//! `tasks/srl/dataset.py`, `tasks/srl/datasets/*.py`), scored with
//! [`super::seqeval`].
//!
//! Tasks ([`tagging_task_by_name`]):
//!
//! | name | files | format | tag set |
//! |---|---|---|---|
//! | `ner/conll2003` | `train.txt`, `valid.txt`, `test.txt` | 4 space-separated columns, tag last | the official 9 (`O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC, B-MISC, I-MISC`) |
//! | `ner/wnut17` | `wnut17train.conll`, `emerging.dev.conll`, `emerging.test.annotated` | 2 tab-separated columns | "O", then train's other tags sorted |
//! | `ner/conll04` | `conll04_{train,dev,test}.json` | SpERT JSON, entity spans made BIO | the official 9 (`O, B-Loc, B-Peop, B-Org, B-Other, I-Loc, …`) |
//! | `srl/conll05` | `conll05.{train,devel,test.wsj}.txt` | `index w1 … wn ||| t1 … tn` | the official 106 |
//! | `srl/conll12` | `conll2012.{train,devel,test}.txt` | same | the official 116 |
//! | `custom/conll` | `train`, `dev`/`valid`, `test` + `.txt`/`.conll`/`.tsv`/`.bio` | any whitespace- or tab-separated columns ([`TaggingOptions`]) | "O", then train's other tags sorted |
//!
//! Column files: a blank (or whitespace-only) line or a `-DOCSTART-` line
//! ends a sentence, as in the official `_generate_examples`. A line holding a
//! tab is split on tabs, any other on runs of whitespace.
//!
//! Features ([`featurize_tagging`]) follow the official
//! `tokenize_and_align_labels` (`is_split_into_words=True`,
//! `label_all_tokens=False`): the words go to the tokenizer pre-tokenized and
//! only the first sub-token of each word carries its tag; special tokens and
//! later sub-tokens get -100. Where the official code truncates a sentence to
//! the model's length, here a long sentence is cut into consecutive windows
//! of whole words, so every word is labeled exactly once.
//!
//! `predict` reads its input with [`read_tagging_input`]: a `.txt` file is
//! raw text unless it is in column form.
//!
//! Every reading error names the file, the line and what was expected.

mod features;
mod input;
mod read;
mod spans;
mod tag_sets;

pub use features::{
    featurize_tagging, word_predictions, TaggingFeatures, TaggingTokenizer, TokenFeature,
};
pub use input::{read_tagging_input, RawLine, TaggingInput};
use read::{read_columns, read_spert, read_srl, ColumnSpec, TagCheck};
pub use spans::{entity_spans, split_words, EntitySpan};
use tag_sets::{CONLL04_TAGS, CONLL05_TAGS, CONLL12_TAGS, CONLL2003_TAGS};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{list, Split};
use crate::{Error, Result};

/// One sentence: its words and, when the file is labeled, one tag per word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedSentence {
    pub words: Vec<String>,
    /// One tag per word (`None` for unlabeled text).
    pub tags: Option<Vec<String>>,
    /// SRL: the index in `words` of the predicate the tags are about.
    pub predicate: Option<usize>,
}

impl TaggedSentence {
    /// The unlabeled sentence of raw-text words ([`split_words`]).
    pub fn unlabeled(words: &[Word]) -> Self {
        TaggedSentence {
            words: words.iter().map(|w| w.0.clone()).collect(),
            tags: None,
            predicate: None,
        }
    }
}

/// A word of raw text and its char offsets (start, end exclusive).
pub type Word = (String, usize, usize);

/// A sequence-labeling task: where its files are, how to read them, its tags.
pub trait TaggingTask: Send + Sync {
    /// The registry name, e.g. `"ner/conll2003"`.
    fn name(&self) -> &str;

    /// Where `split` lives inside the task's data folder (see
    /// [`tagging_task_dir`]).
    fn split_path(&self, dir: &Path, split: Split) -> PathBuf;

    /// Reads one file of the task's format.
    fn read(&self, path: &Path) -> Result<Vec<TaggedSentence>>;

    /// The task's file format in words, for messages: "CoNLL columns
    /// (token POS chunk NER)".
    fn file_format(&self) -> String;

    /// Whether the task's files are JSON (so a JSON input is no mistake).
    fn reads_json(&self) -> bool;

    /// The tag set, indexed by the label ids of [`featurize_tagging`]: the
    /// official order where the official code fixes one, else "O" followed
    /// by the other distinct tags of `train`, sorted.
    fn tag_names(&self, train: &[TaggedSentence]) -> Vec<String>;

    /// `read(split_path(dir, split))`.
    fn read_split(&self, dir: &Path, split: Split) -> Result<Vec<TaggedSentence>> {
        self.read(&self.split_path(dir, split))
    }
}

/// Columns of `custom/conll` files (the built-in tasks ignore these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaggingOptions {
    /// 0-based column of the word (default 0).
    pub token_col: usize,
    /// 0-based column of the tag; `None` (the default): the last column. A
    /// file with a single column then reads as unlabeled.
    pub tag_col: Option<usize>,
}

/// The names [`tagging_task_by_name`] accepts.
pub fn known_tagging_tasks() -> &'static [&'static str] {
    &[
        "ner/conll2003",
        "ner/wnut17",
        "ner/conll04",
        "srl/conll05",
        "srl/conll12",
        CUSTOM,
    ]
}

const CUSTOM: &str = "custom/conll";

/// Makes the task `name` (case-insensitive; the official dataset names
/// `ner/conll2004`, `srl/conll2005` and `srl/conll2012` are accepted too).
pub fn tagging_task_by_name(name: &str, options: &TaggingOptions) -> Result<Box<dyn TaggingTask>> {
    let key = canonical(name);
    if let Some(t) = Builtin::by_name(&key) {
        return Ok(Box::new(t));
    }
    if key == CUSTOM {
        if options.tag_col == Some(options.token_col) {
            return Err(Error::InvalidArgument(format!(
                "{CUSTOM}: the token column and the tag column are both {}",
                options.token_col
            )));
        }
        return Ok(Box::new(CustomConll { options: *options }));
    }
    Err(Error::InvalidArgument(format!(
        "unknown tagging task {name:?}; known tagging tasks: {}",
        list(known_tagging_tasks())
    )))
}

/// The conventional data folder of a built-in tagging task under a data
/// root laid out like `shared/data` (`conll2003`, `wnut17`, `conll04`,
/// `conll05`, `conll12`); `None` for unknown names and `custom/conll`.
pub fn tagging_task_dir(data_root: &Path, name: &str) -> Option<PathBuf> {
    Builtin::by_name(&canonical(name)).map(|t| data_root.join(t.folder))
}

fn canonical(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    match lower.as_str() {
        "ner/conll2004" => "ner/conll04".into(),
        "srl/conll2005" => "srl/conll05".into(),
        "srl/conll2012" => "srl/conll12".into(),
        _ => lower,
    }
}

// ---------------------------------------------------------------------------
// The built-in tasks.

/// How a built-in task's files are laid out.
#[derive(Debug, Clone, Copy)]
enum Format {
    /// Column lines: exactly `width` columns, word first, tag last;
    /// `columns` names them for error messages.
    Columns { width: usize, columns: &'static str },
    /// SpERT JSON (`[{"tokens": [...], "entities": [{"type","start","end"}]}]`).
    Spert,
    /// The official SRL line format.
    Srl,
}

#[derive(Debug, Clone, Copy)]
struct Builtin {
    name: &'static str,
    folder: &'static str,
    /// train, dev, test file names.
    files: [&'static str; 3],
    format: Format,
    /// `None`: "O" + train's sorted tags.
    tags: Option<&'static [&'static str]>,
}

impl Builtin {
    fn by_name(key: &str) -> Option<Builtin> {
        let t = match key {
            // tasks/ner/datasets/conll2003.py: _TRAINING_FILE, _DEV_FILE, _TEST_FILE.
            "ner/conll2003" => Builtin {
                name: "ner/conll2003",
                folder: "conll2003",
                files: ["train.txt", "valid.txt", "test.txt"],
                format: Format::Columns {
                    width: 4,
                    columns: "token POS chunk NER",
                },
                tags: Some(CONLL2003_TAGS),
            },
            // The WNUT-17 organisers' file names (not in the official code).
            "ner/wnut17" => Builtin {
                name: "ner/wnut17",
                folder: "wnut17",
                files: [
                    "wnut17train.conll",
                    "emerging.dev.conll",
                    "emerging.test.annotated",
                ],
                format: Format::Columns {
                    width: 2,
                    columns: "token tag",
                },
                tags: None,
            },
            // SpERT's split files; the official code reads a CoNLL rendering
            // of the same sentences with this tag set.
            "ner/conll04" => Builtin {
                name: "ner/conll04",
                folder: "conll04",
                files: [
                    "conll04_train.json",
                    "conll04_dev.json",
                    "conll04_test.json",
                ],
                format: Format::Spert,
                tags: Some(CONLL04_TAGS),
            },
            // tasks/srl/datasets/conll2005.py (test = WSJ; Brown is
            // conll05.test.brown.txt, readable with `read`).
            "srl/conll05" => Builtin {
                name: "srl/conll05",
                folder: "conll05",
                files: [
                    "conll05.train.txt",
                    "conll05.devel.txt",
                    "conll05.test.wsj.txt",
                ],
                format: Format::Srl,
                tags: Some(CONLL05_TAGS),
            },
            // tasks/srl/datasets/conll2012.py.
            "srl/conll12" => Builtin {
                name: "srl/conll12",
                folder: "conll12",
                files: [
                    "conll2012.train.txt",
                    "conll2012.devel.txt",
                    "conll2012.test.txt",
                ],
                format: Format::Srl,
                tags: Some(CONLL12_TAGS),
            },
            _ => return None,
        };
        Some(t)
    }
}

impl TaggingTask for Builtin {
    fn name(&self) -> &str {
        self.name
    }

    fn split_path(&self, dir: &Path, split: Split) -> PathBuf {
        let i = match split {
            Split::Train => 0,
            Split::Dev => 1,
            Split::Test => 2,
        };
        dir.join(self.files[i])
    }

    fn read(&self, path: &Path) -> Result<Vec<TaggedSentence>> {
        match self.format {
            Format::Columns { width, columns } => read_columns(
                path,
                &ColumnSpec {
                    width: Some(width),
                    columns,
                    token_col: 0,
                    tag_col: None,
                    check: TagCheck::Iob2,
                },
            ),
            Format::Spert => read_spert(path),
            Format::Srl => read_srl(path),
        }
    }

    fn file_format(&self) -> String {
        match self.format {
            Format::Columns { columns, .. } => format!("CoNLL columns ({columns})"),
            Format::Spert => "SpERT JSON".to_string(),
            Format::Srl => "SRL lines (`index w1 … wn ||| t1 … tn`)".to_string(),
        }
    }

    fn reads_json(&self) -> bool {
        matches!(self.format, Format::Spert)
    }

    fn tag_names(&self, train: &[TaggedSentence]) -> Vec<String> {
        match self.tags {
            Some(tags) => tags.iter().map(|s| s.to_string()).collect(),
            None => sorted_tags(train),
        }
    }
}

/// `custom/conll`: any column file.
#[derive(Debug)]
struct CustomConll {
    options: TaggingOptions,
}

impl TaggingTask for CustomConll {
    fn name(&self) -> &str {
        CUSTOM
    }

    /// The first of `<name>.{txt,conll,tsv,bio}` that exists, with names
    /// `train`; `dev`, `valid`, `validation`; `test`. Else `<name>.txt`.
    fn split_path(&self, dir: &Path, split: Split) -> PathBuf {
        let names: &[&str] = match split {
            Split::Train => &["train"],
            Split::Dev => &["dev", "valid", "validation"],
            Split::Test => &["test"],
        };
        for name in names {
            for ext in ["txt", "conll", "tsv", "bio"] {
                let p = dir.join(format!("{name}.{ext}"));
                if p.is_file() {
                    return p;
                }
            }
        }
        dir.join(format!("{}.txt", names[0]))
    }

    fn read(&self, path: &Path) -> Result<Vec<TaggedSentence>> {
        read_columns(
            path,
            &ColumnSpec {
                width: None,
                columns: "",
                token_col: self.options.token_col,
                tag_col: self.options.tag_col,
                check: TagCheck::Iobes,
            },
        )
    }

    fn file_format(&self) -> String {
        let tag = self
            .options
            .tag_col
            .map_or("the last column".to_string(), |c| format!("column {c}"));
        format!(
            "CoNLL columns (word in column {}, tag in {tag}, a blank line between sentences)",
            self.options.token_col
        )
    }

    fn reads_json(&self) -> bool {
        false
    }

    fn tag_names(&self, train: &[TaggedSentence]) -> Vec<String> {
        sorted_tags(train)
    }
}

/// "O", then every other distinct tag of `sentences`, sorted.
fn sorted_tags(sentences: &[TaggedSentence]) -> Vec<String> {
    let distinct: BTreeSet<&str> = sentences
        .iter()
        .filter_map(|s| s.tags.as_ref())
        .flatten()
        .map(String::as_str)
        .filter(|t| *t != "O")
        .collect();
    std::iter::once("O")
        .chain(distinct)
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names() {
        for name in known_tagging_tasks() {
            let t = tagging_task_by_name(name, &TaggingOptions::default()).unwrap();
            assert_eq!(t.name(), *name);
        }
        let t = tagging_task_by_name("SRL/CoNLL2005", &TaggingOptions::default()).unwrap();
        assert_eq!(t.name(), "srl/conll05");
        let e = tagging_task_by_name("ner/ontonotes", &TaggingOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("ner/ontonotes") && e.contains("ner/conll2003"),
            "{e}"
        );
    }
}

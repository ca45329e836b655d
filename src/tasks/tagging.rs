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
//! Every reading error names the file, the line and what was expected.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Deserialize;
use tokenizers::{PreTokenizerWrapper, Token};

use super::formats::{invalid, no_examples, read_text};
use super::seqeval::{self, Mode};
use super::{list, Split};
use crate::model::tokenizer::Tokenizer;
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
// Tag sets fixed by the official code.

/// `tasks/ner/datasets/conll2003.py`, `ner_tags` ClassLabel names.
const CONLL2003_TAGS: &[&str] = &[
    "O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC",
];

/// `tasks/ner/datasets/conll2004.py`, `ner_tags` ClassLabel names.
const CONLL04_TAGS: &[&str] = &[
    "O", "B-Loc", "B-Peop", "B-Org", "B-Other", "I-Loc", "I-Peop", "I-Org", "I-Other",
];

/// `tasks/srl/datasets/conll2005.py`, `tags` ClassLabel names (106; "O" is
/// index 73).
#[rustfmt::skip]
const CONLL05_TAGS: &[&str] = &[
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
const CONLL12_TAGS: &[&str] = &[
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

// ---------------------------------------------------------------------------
// Readers.

/// Which tags a reader accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
enum TagCheck {
    /// `O`, `B-TYPE`, `I-TYPE` (the NER and SRL data are IOB2).
    Iob2,
    /// Also `E-TYPE` and `S-TYPE` (custom files may be IOBES; seqeval's
    /// default mode reads both).
    Iobes,
}

impl TagCheck {
    fn check(self, tag: &str) -> std::result::Result<(), String> {
        let prefixes: &[&str] = match self {
            TagCheck::Iob2 => &["B-", "I-"],
            TagCheck::Iobes => &["B-", "I-", "E-", "S-"],
        };
        let ok = tag == "O"
            || prefixes
                .iter()
                .any(|p| tag.strip_prefix(p).is_some_and(|ty| !ty.is_empty()));
        if ok {
            Ok(())
        } else {
            Err(match self {
                TagCheck::Iob2 => {
                    format!("tag {tag:?} is not in IOB form (expected O, B-TYPE or I-TYPE)")
                }
                TagCheck::Iobes => format!(
                    "tag {tag:?} is not in IOB form (expected O, B-TYPE, I-TYPE, E-TYPE or S-TYPE)"
                ),
            })
        }
    }
}

/// The layout of a column file.
struct ColumnSpec {
    /// Exact column count; `None`: that of the first word line.
    width: Option<usize>,
    /// Column names for error messages ("token POS chunk NER").
    columns: &'static str,
    token_col: usize,
    /// `None`: the last column.
    tag_col: Option<usize>,
    check: TagCheck,
}

/// The lines of a file with their 1-based numbers, `\r` dropped.
fn numbered(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
}

/// Splits a column line: on tabs when it holds one (tokens may then hold
/// spaces), else on runs of whitespace.
fn split_columns(line: &str) -> Vec<&str> {
    if line.contains('\t') {
        line.trim_end().split('\t').collect()
    } else {
        line.split_whitespace().collect()
    }
}

/// Reads a CoNLL-style column file (see the module docs).
fn read_columns(path: &Path, spec: &ColumnSpec) -> Result<Vec<TaggedSentence>> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut tags: Vec<String> = Vec::new();
    // Set by the first word line when the spec leaves it open.
    let mut width = spec.width;
    let mut labeled = true;
    let flush =
        |words: &mut Vec<String>, tags: &mut Vec<String>, labeled: bool, out: &mut Vec<_>| {
            if !words.is_empty() {
                out.push(TaggedSentence {
                    words: std::mem::take(words),
                    tags: labeled.then(|| std::mem::take(tags)),
                    predicate: None,
                });
                tags.clear();
            }
        };
    for (line_no, line) in numbered(&text) {
        // As the official reader: `-DOCSTART-` lines and blank lines end a
        // sentence.
        if line.trim().is_empty() || line.starts_with("-DOCSTART-") {
            flush(&mut words, &mut tags, labeled, &mut out);
            continue;
        }
        let fields = split_columns(line);
        let w = match width {
            Some(w) => w,
            None => {
                let w = fields.len();
                let needed = spec.token_col.max(spec.tag_col.unwrap_or(0)) + 1;
                if w < needed {
                    return Err(invalid(
                        path,
                        line_no,
                        format!(
                            "expected at least {needed} columns (token column {}, tag column {}), found {w}",
                            spec.token_col,
                            spec.tag_col.map_or("last".to_string(), |c| c.to_string())
                        ),
                    ));
                }
                labeled = !(w == 1 && spec.tag_col.is_none());
                width = Some(w);
                w
            }
        };
        if fields.len() != w {
            let what = if spec.columns.is_empty() {
                format!("{w} columns as on the first line")
            } else {
                format!("{w} columns ({})", spec.columns)
            };
            return Err(invalid(
                path,
                line_no,
                format!("expected {what}, found {}: {line:?}", fields.len()),
            ));
        }
        words.push(fields[spec.token_col].to_string());
        if labeled {
            let tag = fields[spec.tag_col.unwrap_or(w - 1)];
            spec.check
                .check(tag)
                .map_err(|m| invalid(path, line_no, m))?;
            tags.push(tag.to_string());
        }
    }
    flush(&mut words, &mut tags, labeled, &mut out);
    if out.is_empty() {
        return Err(no_examples(path, "the file holds no sentence"));
    }
    Ok(out)
}

#[derive(Deserialize)]
struct SpertSentence {
    tokens: Vec<String>,
    entities: Vec<SpertEntity>,
}

#[derive(Deserialize)]
struct SpertEntity {
    #[serde(rename = "type")]
    ty: String,
    start: usize,
    end: usize,
}

/// Reads SpERT JSON and turns each sentence's entity spans (`end`
/// exclusive) into BIO tags: `B-<type>` on the first word, `I-<type>` on the
/// rest, `O` elsewhere.
fn read_spert(path: &Path) -> Result<Vec<TaggedSentence>> {
    let text = read_text(path)?;
    if text.trim().is_empty() {
        return Err(no_examples(path, "the file is empty"));
    }
    // serde's message already says "at line N column M".
    let sentences: Vec<SpertSentence> =
        serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            message: format!(
                "{e}; expected a SpERT array of {{\"tokens\": [...], \"entities\": [{{\"type\", \"start\", \"end\"}}]}}"
            ),
        })?;
    if sentences.is_empty() {
        return Err(no_examples(path, "the JSON array is empty"));
    }
    let mut lines: Option<Vec<usize>> = None;
    let mut out = Vec::with_capacity(sentences.len());
    for (i, s) in sentences.into_iter().enumerate() {
        let n = s.tokens.len();
        let mut tags = vec!["O".to_string(); n];
        for (k, e) in s.entities.iter().enumerate() {
            let problem = if e.start >= e.end || e.end > n {
                Some(format!(
                    "entity {k} ({}) spans tokens {}..{} but the sentence has {n} tokens; expected 0 <= start < end <= {n}",
                    e.ty, e.start, e.end
                ))
            } else if e.ty.is_empty() || e.ty.chars().any(char::is_whitespace) {
                Some(format!("entity {k} has type {:?}; expected a word", e.ty))
            } else if tags[e.start..e.end].iter().any(|t| t != "O") {
                Some(format!(
                    "entity {k} ({}, tokens {}..{}) overlaps an earlier entity; BIO tags cannot hold nested entities",
                    e.ty, e.start, e.end
                ))
            } else {
                None
            };
            if let Some(msg) = problem {
                // Line numbers are only looked up on error.
                let line = lines.get_or_insert_with(|| element_lines(&text))[i];
                return Err(invalid(path, line, format!("sentence {i}: {msg}")));
            }
            tags[e.start] = format!("B-{}", e.ty);
            for t in &mut tags[e.start + 1..e.end] {
                *t = format!("I-{}", e.ty);
            }
        }
        out.push(TaggedSentence {
            words: s.tokens,
            tags: Some(tags),
            predicate: None,
        });
    }
    Ok(out)
}

/// The 1-based line on which each element of a top-level JSON array starts
/// (for error messages: serde_json keeps no positions).
fn element_lines(text: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let (mut depth, mut line) = (0usize, 1usize);
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                if depth == 1 {
                    lines.push(line);
                }
                depth += 1;
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    lines
}

/// Reads the official SRL line format (`tasks/srl/datasets/conll2005.py`,
/// `_generate_examples`): the predicate's word index, the words, `|||`,
/// one tag per word, all whitespace-separated. Blank lines are skipped (as
/// the conll2012 reader does).
fn read_srl(path: &Path) -> Result<Vec<TaggedSentence>> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (line_no, line) in numbered(&text) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let err = |m: String| invalid(path, line_no, m);
        let predicate: usize = fields[0].parse().map_err(|_| {
            err(format!(
                "expected the predicate's word index (a non-negative integer) first, found {:?}; \
                 the format is `index w1 ... wn ||| t1 ... tn`",
                fields[0]
            ))
        })?;
        // As the official reader: join the rest with spaces, split on "|||".
        let rest = fields[1..].join(" ");
        let parts: Vec<&str> = rest.split("|||").collect();
        if parts.len() != 2 {
            return Err(err(format!(
                "expected one `|||` between the words and the tags, found {}",
                parts.len() - 1
            )));
        }
        let words: Vec<String> = parts[0].split_whitespace().map(String::from).collect();
        let tags: Vec<String> = parts[1].split_whitespace().map(String::from).collect();
        if words.is_empty() {
            return Err(err("no words before `|||`".to_string()));
        }
        if words.len() != tags.len() {
            return Err(err(format!(
                "{} words but {} tags; expected one tag per word",
                words.len(),
                tags.len()
            )));
        }
        if predicate >= words.len() {
            return Err(err(format!(
                "predicate index {predicate} is out of range; the sentence has {} words",
                words.len()
            )));
        }
        for t in &tags {
            TagCheck::Iob2.check(t).map_err(err)?;
        }
        out.push(TaggedSentence {
            words,
            tags: Some(tags),
            predicate: Some(predicate),
        });
    }
    if out.is_empty() {
        return Err(no_examples(path, "the file holds no sentence"));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Features.

/// One window of one sentence, ready for the encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFeature {
    /// Token ids with the model's special tokens, e.g. BERT
    /// `[CLS] w… [SEP]`, SRL `[CLS] w… [SEP] predicate… [SEP]`; length
    /// ≤ `max_len`, unpadded.
    pub ids: Vec<u32>,
    /// Segment ids, same length (all 0: one sequence, as the official code).
    pub type_ids: Vec<u32>,
    /// Per token: the tag index on the first sub-token of each word this
    /// window labels; -100 (ignored by the loss) on special tokens, later
    /// sub-tokens, the SRL predicate segment, and everywhere when the
    /// sentence is unlabeled.
    pub labels: Vec<i64>,
    /// Per token: `Some(word index in the sentence)` on the first sub-token
    /// of each word this window labels, `None` elsewhere. Set for unlabeled
    /// sentences too, to read predictions back ([`word_predictions`]).
    pub word_of_token: Vec<Option<usize>>,
    /// Index of the sentence in the featurized slice.
    pub sentence: usize,
}

/// The features of a list of sentences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggingFeatures {
    /// One or more windows per non-empty sentence, in sentence order.
    pub features: Vec<TokenFeature>,
    /// Sentences cut into more than one window.
    pub windows_split: usize,
    /// Gold tags not in the tag set: counted and trained as "O".
    pub unknown_tags: usize,
    /// Words the tokenizer turned into no token at all (e.g. a lone
    /// zero-width space under BERT's normalizer), encoded as the unknown
    /// token instead so that they are labeled too.
    pub empty_words: usize,
    /// Single words longer than a whole window, whose sub-tokens were cut
    /// to fit (the word keeps its label on its first sub-token).
    pub truncated_words: usize,
}

/// The tokenizer as the official code configures it for pre-split words,
/// and facts about it. Built once ([`TaggingTokenizer::new`] clones the
/// tokenizer) and reused for any number of sentences: the server keeps one.
pub struct TaggingTokenizer {
    tok: tokenizers::Tokenizer,
    /// Special tokens before the first word (`[CLS]`, `<s>`: 1).
    leading: usize,
    /// Special tokens added to one sequence in all.
    specials: usize,
    /// The unknown token, for words that give no token.
    unk: Option<Token>,
    /// The separator token (SRL predicate segment).
    sep: Option<Token>,
}

impl TaggingTokenizer {
    pub fn new(tokenizer: &Tokenizer) -> Result<Self> {
        let mut tok = tokenizer.inner().clone();
        // The official code loads RoBERTa-style tokenizers with
        // `add_prefix_space=True` (tasks/utils.py ADD_PREFIX_SPACE), required
        // for `is_split_into_words`: every word is then encoded as if it
        // followed a space, as inside a sentence. tokenizer.json files
        // usually store `false`; switch it on in our copy.
        let fixed = match tok.get_pre_tokenizer() {
            Some(PreTokenizerWrapper::ByteLevel(bl)) if !bl.add_prefix_space => {
                Some(PreTokenizerWrapper::ByteLevel(bl.add_prefix_space(true)))
            }
            Some(PreTokenizerWrapper::Sequence(seq)) => {
                let mut seq = seq.clone();
                let mut changed = false;
                for p in seq.as_mut() {
                    if let PreTokenizerWrapper::ByteLevel(bl) = p {
                        if !bl.add_prefix_space {
                            *bl = bl.add_prefix_space(true);
                            changed = true;
                        }
                    }
                }
                changed.then_some(PreTokenizerWrapper::Sequence(seq))
            }
            _ => None,
        };
        if let Some(p) = fixed {
            tok.with_pre_tokenizer(Some(p));
        }
        let probe = tok.encode(vec!["a"], true).map_err(tok_err)?;
        let leading = probe
            .get_word_ids()
            .iter()
            .position(Option::is_some)
            .ok_or_else(|| {
                Error::InvalidArgument("tokenizer: the word \"a\" gives no token".to_string())
            })?;
        let specials = tok
            .get_post_processor()
            .map(|p| tokenizers::PostProcessor::added_tokens(p, false))
            .unwrap_or(0);
        let find = |names: &[&str]| {
            names.iter().find_map(|n| {
                tok.token_to_id(n)
                    .map(|id| Token::new(id, n.to_string(), (0, 0)))
            })
        };
        let unk = find(&["[UNK]", "<unk>"]);
        let sep = find(&["[SEP]", "</s>"]);
        Ok(TaggingTokenizer {
            tok,
            leading,
            specials,
            unk,
            sep,
        })
    }
}

/// Tokenizes sentences for token classification (see the module docs).
///
/// `tags` is the tag set ([`TaggingTask::tag_names`]). Each sentence gives
/// one window, or — when its tokens and the special tokens exceed `max_len`
/// — consecutive windows of whole words, each at most `max_len` tokens, each
/// word labeled in exactly one window. SRL sentences (with a predicate) get
/// `[SEP] predicate` after their words in every window, as the official
/// `tasks/srl/dataset.py` appends `["[SEP]", tokens[index]]` to the words:
/// one sequence, so type ids stay 0 (BERT: `[CLS] w… [SEP] pred… [SEP]`);
/// only the sentence's words are labeled. Tokenizers without `[SEP]`
/// (RoBERTa) get their own `</s>` there, where the official code would pass
/// the literal text "[SEP]" and have it split into pieces. Empty sentences
/// give no feature.
///
/// Long lists of sentences are tokenized in parallel (rayon); the order is kept.
///
/// Errors: a sentence whose tag count differs from its word count, a
/// predicate index out of range, an unknown tag when the tag set has no
/// "O", `max_len` leaving no room for a word, tokenizer failures.
pub fn featurize_tagging(
    tokenizer: &Tokenizer,
    sentences: &[TaggedSentence],
    tags: &[String],
    max_len: usize,
) -> Result<TaggingFeatures> {
    TaggingTokenizer::new(tokenizer)?.featurize(sentences, tags, max_len)
}

/// Below this many sentences, tokenizing in parallel costs more than it
/// saves (and a server's request threads should not wait on rayon's pool
/// while the model uses it).
const PARALLEL_SENTENCES: usize = 64;

impl TaggingTokenizer {
    /// [`featurize_tagging`] with this tokenizer.
    pub fn featurize(
        &self,
        sentences: &[TaggedSentence],
        tags: &[String],
        max_len: usize,
    ) -> Result<TaggingFeatures> {
        let ctx = Context {
            enc: self,
            tags,
            tag_index: tags
                .iter()
                .enumerate()
                .map(|(i, t)| (t.as_str(), i as i64))
                .collect(),
            max_len,
        };
        // Sentences are independent; `collect` keeps their order.
        let per_sentence: Vec<SentenceFeatures> = if sentences.len() >= PARALLEL_SENTENCES {
            sentences
                .par_iter()
                .enumerate()
                .map(|(si, s)| ctx.sentence(si, s))
                .collect::<Result<_>>()?
        } else {
            sentences
                .iter()
                .enumerate()
                .map(|(si, s)| ctx.sentence(si, s))
                .collect::<Result<_>>()?
        };
        let mut out = TaggingFeatures {
            features: Vec::new(),
            windows_split: 0,
            unknown_tags: 0,
            empty_words: 0,
            truncated_words: 0,
        };
        for s in per_sentence {
            out.windows_split += usize::from(s.features.len() > 1);
            out.unknown_tags += s.unknown_tags;
            out.empty_words += s.empty_words;
            out.truncated_words += s.truncated_words;
            out.features.extend(s.features);
        }
        Ok(out)
    }
}

/// What [`featurize_tagging`] needs for every sentence.
struct Context<'a> {
    enc: &'a TaggingTokenizer,
    tags: &'a [String],
    tag_index: HashMap<&'a str, i64>,
    max_len: usize,
}

/// The windows of one sentence and its counts.
struct SentenceFeatures {
    features: Vec<TokenFeature>,
    unknown_tags: usize,
    empty_words: usize,
    truncated_words: usize,
}

fn tok_err(e: tokenizers::Error) -> Error {
    Error::InvalidArgument(format!("tokenizer: {e}"))
}

impl Context<'_> {
    /// Featurizes sentence `si`.
    fn sentence(&self, si: usize, sentence: &TaggedSentence) -> Result<SentenceFeatures> {
        let enc = self.enc;
        let n = sentence.words.len();
        let mut out = SentenceFeatures {
            features: Vec::new(),
            unknown_tags: 0,
            empty_words: 0,
            truncated_words: 0,
        };
        if n == 0 {
            return Ok(out);
        }
        // Label ids per word (or none for unlabeled text).
        let labels: Option<Vec<i64>> = match &sentence.tags {
            None => None,
            Some(t) if t.len() != n => {
                return Err(Error::InvalidArgument(format!(
                    "sentence {si}: {} tags for {n} words",
                    t.len()
                )))
            }
            Some(t) => {
                let mut ids = Vec::with_capacity(n);
                for tag in t {
                    match self.tag_index.get(tag.as_str()) {
                        Some(&i) => ids.push(i),
                        None => {
                            let o = self.tag_index.get("O").copied().ok_or_else(|| {
                                Error::InvalidArgument(format!(
                                    "sentence {si}: tag {tag:?} is not in the tag set ({}) and the tag set has no \"O\" to map it to",
                                    list(self.tags)
                                ))
                            })?;
                            out.unknown_tags += 1;
                            ids.push(o);
                        }
                    }
                }
                Some(ids)
            }
        };

        // Sub-tokens per word. Pre-tokenized words are normalized and
        // split one by one, so a word's pieces do not depend on its
        // neighbours and any run of words can be cut out as a window.
        let whole = enc
            .tok
            .encode(sentence.words.as_slice(), false)
            .map_err(tok_err)?;
        let mut pieces: Vec<Vec<Token>> = vec![Vec::new(); n];
        for (i, w) in whole.get_word_ids().iter().enumerate() {
            if let Some(w) = w {
                pieces[*w as usize].push(Token::new(
                    whole.get_ids()[i],
                    whole.get_tokens()[i].clone(),
                    whole.get_offsets()[i],
                ));
            }
        }
        for (wi, p) in pieces.iter_mut().enumerate() {
            if p.is_empty() {
                // The official code leaves such a word unlabeled (and drops
                // it from evaluation); we keep it, as the unknown token.
                let unk = enc.unk.clone().ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "sentence {si}: word {wi} ({:?}) gives no token and the tokenizer has no unknown token",
                        sentence.words[wi]
                    ))
                })?;
                p.push(unk);
                out.empty_words += 1;
            }
        }

        // SRL: `[SEP] predicate` after the words of every window.
        let tail: Vec<Token> = match sentence.predicate {
            None => Vec::new(),
            Some(p) if p >= n => {
                return Err(Error::InvalidArgument(format!(
                    "sentence {si}: predicate index {p} is out of range ({n} words)"
                )))
            }
            Some(p) => {
                let sep = enc.sep.clone().ok_or_else(|| {
                    Error::InvalidArgument(
                        "tokenizer: no [SEP] or </s> token to put before the predicate".to_string(),
                    )
                })?;
                std::iter::once(sep)
                    .chain(pieces[p].iter().cloned())
                    .collect()
            }
        };
        let max_len = self.max_len;
        let budget = max_len
            .checked_sub(enc.specials + tail.len())
            .filter(|b| *b > 0)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "sentence {si}: max_len {max_len} leaves no room for a word next to the {} special tokens{}",
                    enc.specials,
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!(" and the {}-token predicate segment", tail.len())
                    }
                ))
            })?;

        // Greedy windows of whole words: [a, b) holds as many words as fit.
        let mut windows = Vec::new();
        let mut a = 0;
        while a < n {
            let (mut b, mut used) = (a, 0);
            while b < n && used + pieces[b].len() <= budget {
                used += pieces[b].len();
                b += 1;
            }
            if b == a {
                // One word longer than a window: it goes alone, cut.
                b = a + 1;
                out.truncated_words += 1;
            }
            windows.push((a, b));
            a = b;
        }

        for (a, b) in windows {
            // Content tokens and, per word, the position of its first piece.
            let mut content: Vec<Token> = Vec::new();
            let mut firsts: Vec<(usize, usize)> = Vec::with_capacity(b - a);
            for (w, p) in pieces.iter().enumerate().take(b).skip(a) {
                firsts.push((w, content.len()));
                content.extend(p.iter().cloned());
            }
            content.truncate(budget);
            content.extend(tail.iter().cloned());
            // The model's special tokens around the window, by the
            // tokenizer's own post-processor.
            let encoding = enc
                .tok
                .post_process(tokenizers::Encoding::from_tokens(content, 0), None, true)
                .map_err(tok_err)?;
            let len = encoding.len();
            let mut labels_out = vec![-100i64; len];
            let mut word_of_token = vec![None; len];
            for (w, pos) in firsts {
                let t = enc.leading + pos;
                word_of_token[t] = Some(w);
                if let Some(l) = &labels {
                    labels_out[t] = l[w];
                }
            }
            out.features.push(TokenFeature {
                ids: encoding.get_ids().to_vec(),
                type_ids: encoding.get_type_ids().to_vec(),
                labels: labels_out,
                word_of_token,
                sentence: si,
            });
        }
        Ok(out)
    }
}

/// Gathers token-level predictions back into one tag index per word.
///
/// `token_argmax[i]` is the arg-max tag index per token of `features[i]`
/// (it may be longer, e.g. padded to the batch). `sentence_lengths[s]` is
/// the word count of sentence `s`. Each word takes the prediction on its
/// first sub-token in the window that labels it; a word no feature labels
/// (only in an empty sentence, or with features not made by
/// [`featurize_tagging`]) stays 0.
///
/// # Panics
/// When `token_argmax` and `features` differ in length, a row is shorter
/// than its feature, or a feature points outside `sentence_lengths`.
pub fn word_predictions(
    features: &[TokenFeature],
    token_argmax: &[Vec<usize>],
    sentence_lengths: &[usize],
) -> Vec<Vec<usize>> {
    assert_eq!(
        features.len(),
        token_argmax.len(),
        "one row of token predictions per feature"
    );
    let mut out: Vec<Vec<usize>> = sentence_lengths.iter().map(|&n| vec![0; n]).collect();
    for (f, row) in features.iter().zip(token_argmax) {
        assert!(
            row.len() >= f.word_of_token.len(),
            "{} token predictions for a feature of {} tokens",
            row.len(),
            f.word_of_token.len()
        );
        for (t, w) in f.word_of_token.iter().enumerate() {
            if let Some(w) = w {
                out[f.sentence][*w] = row[t];
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Raw text (the `predict` command).

/// An entity found in raw text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitySpan {
    /// The entity type, e.g. `"PER"`.
    pub label: String,
    /// Char offset of the first char (not byte).
    pub start: usize,
    /// Char offset one past the last char.
    pub end: usize,
    /// `text` between the offsets.
    pub text: String,
}

/// Splits raw text into words for the tagger, with **char** offsets
/// (`start`, `end` exclusive), roughly as CoNLL data is tokenized: runs of
/// letters and digits are words, and keep inner `-`, `.`, `'` and `’`
/// between two of them ("Chicago-based", "U.S", "3.5", "O'Neil") and `,`
/// between two digits ("1,000"); every other non-space char is a word of
/// its own ("U.S." → "U.S" "."; "(AP)" → "(" "AP" ")").
pub fn split_words(text: &str) -> Vec<Word> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if !c.is_alphanumeric() {
            out.push((c.to_string(), i, i + 1));
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < chars.len() {
            let c = chars[i];
            if c.is_alphanumeric() {
                i += 1;
                continue;
            }
            let next = chars.get(i + 1).copied();
            let joins = match c {
                '-' | '.' | '\'' | '’' => next.is_some_and(char::is_alphanumeric),
                ',' => chars[i - 1].is_ascii_digit() && next.is_some_and(|n| n.is_ascii_digit()),
                _ => false,
            };
            if !joins {
                break;
            }
            i += 2;
        }
        out.push((chars[start..i].iter().collect(), start, i));
    }
    out
}

/// The entities of one tagged text, chunked conlleval-style (seqeval's
/// default mode: an `I-X` without `B-X` starts an entity, a type change
/// ends one). `words` come from [`split_words`] on `text`, `tags` are one
/// per word (extra words or tags are ignored; an empty tag reads as `O`).
pub fn entity_spans(words: &[Word], tags: &[String], text: &str) -> Vec<EntitySpan> {
    let n = words.len().min(tags.len());
    let tags: Vec<&str> = tags[..n]
        .iter()
        .map(|t| if t.is_empty() { "O" } else { t.as_str() })
        .collect();
    // Cannot fail: no empty tag is left.
    let found = seqeval::entities(&tags, Mode::Default).unwrap_or_default();
    // Byte position of every char offset (and of the end).
    let bytes: Vec<usize> = text
        .char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(text.len()))
        .collect();
    found
        .into_iter()
        .map(|e| {
            let start = words[e.start].1;
            let end = words[e.end - 1].2;
            let slice = |c: usize| bytes[c.min(bytes.len() - 1)];
            EntitySpan {
                label: e.label,
                start,
                end,
                text: text[slice(start)..slice(end)].to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn tag_forms() {
        assert!(TagCheck::Iob2.check("B-PER").is_ok());
        assert!(TagCheck::Iob2.check("B-").is_err());
        assert!(TagCheck::Iob2.check("E-PER").is_err());
        assert!(TagCheck::Iobes.check("E-PER").is_ok());
        assert!(TagCheck::Iob2.check("PER").is_err());
    }

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

    #[test]
    fn json_element_lines() {
        let text = "[\n  {\"a\": \"[x\\\"{\"},\n  {\"b\": [1,\n 2]}, {}\n]";
        assert_eq!(element_lines(text), vec![2, 3, 4]);
    }

    #[test]
    fn words_of_raw_text() {
        let w = split_words("Müller (AP) visited U.S. firms, 1,000 O'Neil-based.");
        let words: Vec<&str> = w.iter().map(|(s, _, _)| s.as_str()).collect();
        assert_eq!(
            words,
            [
                "Müller",
                "(",
                "AP",
                ")",
                "visited",
                "U.S",
                ".",
                "firms",
                ",",
                "1,000",
                "O'Neil-based",
                "."
            ]
        );
        assert_eq!((w[0].1, w[0].2), (0, 6));
        assert_eq!((w[1].1, w[1].2), (7, 8));
    }
}

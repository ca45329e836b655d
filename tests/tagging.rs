//! Sequence labeling (src/tasks/tagging/, src/tasks/seqeval.rs): the real
//! NER files in the shared data folder (`$PTUNING_DATA`, default
//! `../shared/data`) against the counts verified in their SOURCE.md, the
//! SpERT → BIO conversion, first-sub-token labeling and windows with the
//! real MiniLM tokenizer (`$PTUNING_MODEL_DIR`, default the cache
//! scripts/fetch-model.sh fills), the SRL line format on a hand-made file,
//! entity spans on raw text, how `predict` reads a tagger's input (a
//! column-form `.txt`, a byte-order mark, JSON) and how `eval` scores a gold
//! type the adapter lacks, through the CLI on a tiny trained tagger,
//! seqeval against Python seqeval's numbers
//! (tests/fixtures/seqeval/cases.json, from tools/seqeval_golden.py), and
//! every reading error on small files in a temp dir.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ptuning::model::hub::default_model_dir;
use ptuning::model::tokenizer::Tokenizer;
use ptuning::tasks::seqeval::{self, evaluate, Mode};
use ptuning::tasks::tagging::{
    entity_spans, featurize_tagging, read_tagging_input, split_words, tagging_task_by_name,
    tagging_task_dir, word_predictions, TaggedSentence, TaggingOptions, TaggingTask, TokenFeature,
};
use ptuning::tasks::Split;
use ptuning::training::trainer::{train, TrainConfig, TrainOptions};
use serde_json::Value;

fn data_root() -> PathBuf {
    let root = match std::env::var_os("PTUNING_DATA") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
    };
    assert!(
        root.join("conll2003").is_dir(),
        "benchmark data not found at {} (set PTUNING_DATA)",
        root.display()
    );
    root
}

fn minilm() -> Tokenizer {
    let dir = std::env::var_os("PTUNING_MODEL_DIR").map_or_else(default_model_dir, PathBuf::from);
    assert!(
        dir.join("tokenizer.json").exists(),
        "{} has no tokenizer.json: run scripts/fetch-model.sh first",
        dir.display()
    );
    Tokenizer::from_dir(&dir).unwrap()
}

fn task(name: &str) -> Box<dyn TaggingTask> {
    tagging_task_by_name(name, &TaggingOptions::default()).unwrap()
}

fn read(name: &str, split: Split) -> Vec<TaggedSentence> {
    let t = task(name);
    let dir = tagging_task_dir(&data_root(), name).unwrap();
    t.read_split(&dir, split)
        .unwrap_or_else(|e| panic!("{name} {split}: {e}"))
}

fn strings(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// Entity type → count, by seqeval's default chunking of the gold tags.
fn entity_counts(sentences: &[TaggedSentence]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for s in sentences {
        for e in seqeval::entities(s.tags.as_ref().unwrap(), Mode::Default).unwrap() {
            *counts.entry(e.label).or_insert(0) += 1;
        }
    }
    counts
}

fn tokens(sentences: &[TaggedSentence]) -> usize {
    sentences.iter().map(|s| s.words.len()).sum()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn err_of(t: &dyn TaggingTask, path: &Path) -> String {
    match t.read(path) {
        Ok(s) => panic!(
            "{}: read {} sentences, expected an error",
            path.display(),
            s.len()
        ),
        Err(e) => e.to_string(),
    }
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{msg:?} lacks {p:?}");
    }
}

// ---------------------------------------------------------------------------
// Real data: counts as verified in each SOURCE.md.

#[test]
fn conll2003_counts_and_tags() {
    let train = read("ner/conll2003", Split::Train);
    let valid = read("ner/conll2003", Split::Dev);
    assert_eq!((train.len(), tokens(&train)), (14041, 203621));
    assert_eq!((valid.len(), tokens(&valid)), (3250, 51362));
    let want = |l, p, o, m| -> BTreeMap<String, usize> {
        [("LOC", l), ("PER", p), ("ORG", o), ("MISC", m)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    };
    assert_eq!(entity_counts(&train), want(7140, 6600, 6321, 3438));
    assert_eq!(entity_counts(&valid), want(1837, 1842, 1341, 922));
    assert_eq!(
        task("ner/conll2003").tag_names(&train),
        strings("O B-PER I-PER B-ORG I-ORG B-LOC I-LOC B-MISC I-MISC")
    );
    assert_eq!(
        train[0].words,
        strings("EU rejects German call to boycott British lamb .")
    );
    assert_eq!(
        train[0].tags.as_deref().unwrap(),
        strings("B-ORG O B-MISC O O O B-MISC O O")
    );
    assert!(train.iter().all(|s| s.predicate.is_none()));
    // `predict --input valid.txt` reads the official file as columns.
    let t = task("ner/conll2003");
    let dir = tagging_task_dir(&data_root(), "ner/conll2003").unwrap();
    let input = read_tagging_input(t.as_ref(), &t.split_path(&dir, Split::Dev)).unwrap();
    assert!(input.raw.is_none());
    assert_eq!(input.sentences, valid);
}

#[test]
fn wnut17_counts_and_tags() {
    let cases = [
        (Split::Train, 3394, 62730, 1975),
        (Split::Dev, 1009, 15733, 836),
        (Split::Test, 1287, 23394, 1079),
    ];
    for (split, sentences, toks, entities) in cases {
        let s = read("ner/wnut17", split);
        assert_eq!(s.len(), sentences, "{split}");
        assert_eq!(tokens(&s), toks, "{split}");
        assert_eq!(
            entity_counts(&s).values().sum::<usize>(),
            entities,
            "{split}"
        );
    }
    let train = read("ner/wnut17", Split::Train);
    let mut want = vec!["O".to_string()];
    for ty in [
        "corporation",
        "creative-work",
        "group",
        "location",
        "person",
        "product",
    ] {
        want.push(format!("B-{ty}"));
        want.push(format!("I-{ty}"));
    }
    want[1..].sort();
    assert_eq!(task("ner/wnut17").tag_names(&train), want);
}

#[test]
fn conll04_counts_and_bio() {
    for (split, sentences, entities) in [
        (Split::Train, 922, 3377),
        (Split::Dev, 231, 893),
        (Split::Test, 288, 1079),
    ] {
        let s = read("ner/conll04", split);
        assert_eq!(s.len(), sentences, "{split}");
        let counts = entity_counts(&s);
        assert_eq!(counts.values().sum::<usize>(), entities, "{split}");
        assert!(counts
            .keys()
            .all(|k| ["Loc", "Org", "Peop", "Other"].contains(&k.as_str())));
    }
    // The first training sentence: Loc 4..5, Loc 9..10, Org 10..13,
    // Other 15..17, Other 17..20 (end exclusive).
    let train = read("ner/conll04", Split::Train);
    let s = &train[0];
    assert_eq!(
        &s.words[..6],
        strings("Newspaper ` Explains ' U.S. Interests")
    );
    let want =
        "O O O O B-Loc O O O O B-Loc B-Org I-Org I-Org O O B-Other I-Other B-Other I-Other I-Other";
    assert_eq!(s.tags.as_deref().unwrap(), strings(want));
    assert_eq!(
        task("ner/conll04").tag_names(&train),
        strings("O B-Loc B-Peop B-Org B-Other I-Loc I-Peop I-Org I-Other")
    );
}

// ---------------------------------------------------------------------------
// Features with the real MiniLM tokenizer.

fn sentence(words: &str, tags: &str) -> TaggedSentence {
    TaggedSentence {
        words: strings(words),
        tags: Some(strings(tags)),
        predicate: None,
    }
}

#[test]
fn first_sub_token_labeling() {
    let tok = minilm();
    let tags = strings("O B-PER I-PER B-ORG I-ORG B-LOC I-LOC B-MISC I-MISC");
    let s = sentence(
        "Hakawati Theatre hosts Palestinians .",
        "B-LOC I-LOC O B-MISC O",
    );
    let f = featurize_tagging(&tok, std::slice::from_ref(&s), &tags, 128).unwrap();
    assert_eq!(
        (f.features.len(), f.windows_split, f.unknown_tags),
        (1, 0, 0)
    );
    let feat = &f.features[0];
    // Same ids as the HF tokenizer on the pre-tokenized words
    // (is_split_into_words=True, add_special_tokens=True).
    let enc = tok.inner().encode(s.words.as_slice(), true).unwrap();
    assert_eq!(feat.ids, enc.get_ids());
    assert_eq!(feat.type_ids, vec![0; feat.ids.len()]);
    let word_ids = enc.get_word_ids();
    // "Hakawati" is several pieces: only the first is labeled.
    let pieces = word_ids.iter().filter(|w| **w == Some(0)).count();
    assert!(pieces > 1, "{:?}", enc.get_tokens());
    let mut prev = None;
    for (t, w) in word_ids.iter().enumerate() {
        let first = w.is_some() && *w != prev;
        match (first, w) {
            (true, Some(w)) => {
                let w = *w as usize;
                assert_eq!(feat.word_of_token[t], Some(w));
                let tag = &s.tags.as_ref().unwrap()[w];
                assert_eq!(
                    feat.labels[t],
                    tags.iter().position(|x| x == tag).unwrap() as i64
                );
            }
            _ => {
                assert_eq!(feat.labels[t], -100, "token {t}");
                assert_eq!(feat.word_of_token[t], None);
            }
        }
        prev = *w;
    }
    assert_eq!(feat.labels[0], -100); // [CLS]
    assert_eq!(*feat.labels.last().unwrap(), -100); // [SEP]
    assert_eq!(feat.labels.iter().filter(|l| **l >= 0).count(), 5);
}

/// Checks a featurization: each word labeled in exactly one window with its
/// tag, windows within `max_len`, and predictions read back per word.
fn check_windows(
    f: &[TokenFeature],
    sentences: &[TaggedSentence],
    tags: &[String],
    max_len: usize,
) {
    let index: HashMap<&str, usize> = tags
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut seen: Vec<Vec<usize>> = sentences.iter().map(|s| vec![0; s.words.len()]).collect();
    for feat in f {
        assert!(feat.ids.len() <= max_len, "{} tokens", feat.ids.len());
        assert_eq!(feat.ids.len(), feat.labels.len());
        assert_eq!(feat.ids.len(), feat.word_of_token.len());
        for (t, w) in feat.word_of_token.iter().enumerate() {
            match w {
                Some(w) => {
                    seen[feat.sentence][*w] += 1;
                    let gold = &sentences[feat.sentence].tags.as_ref().unwrap()[*w];
                    let want = index.get(gold.as_str()).copied().unwrap_or(index["O"]);
                    assert_eq!(feat.labels[t], want as i64);
                }
                None => assert_eq!(feat.labels[t], -100),
            }
        }
    }
    for (si, s) in seen.iter().enumerate() {
        assert!(
            s.iter().all(|c| *c == 1),
            "sentence {si}: label counts {s:?}"
        );
    }
    // Perfect token predictions give the gold tags back per word.
    let argmax: Vec<Vec<usize>> = f
        .iter()
        .map(|feat| feat.labels.iter().map(|l| (*l).max(0) as usize).collect())
        .collect();
    let lengths: Vec<usize> = sentences.iter().map(|s| s.words.len()).collect();
    let words = word_predictions(f, &argmax, &lengths);
    for (s, pred) in sentences.iter().zip(&words) {
        let gold: Vec<usize> = s
            .tags
            .as_ref()
            .unwrap()
            .iter()
            .map(|t| index.get(t.as_str()).copied().unwrap_or(index["O"]))
            .collect();
        assert_eq!(&gold, pred);
    }
}

#[test]
fn long_sentence_is_split_into_windows() {
    let tok = minilm();
    let tags = strings("O B-PER I-PER B-ORG I-ORG B-LOC I-LOC B-MISC I-MISC");
    // 300 words, some of several pieces, an entity every 7 words.
    let vocab = [
        "the",
        "Hakawati",
        "minister",
        "said",
        "Palestinians",
        ",",
        "Reuters",
    ];
    let words: Vec<String> = (0..300)
        .map(|i| vocab[i % vocab.len()].to_string())
        .collect();
    let tags_of: Vec<String> = (0..300)
        .map(|i| match i % 7 {
            1 => "B-LOC".into(),
            2 => "I-LOC".into(),
            6 => "B-ORG".into(),
            _ => "O".into(),
        })
        .collect();
    let long = TaggedSentence {
        words,
        tags: Some(tags_of),
        predicate: None,
    };
    let short = sentence("EU rejects German call", "B-ORG O B-MISC O");
    let sentences = vec![short, long];
    let f = featurize_tagging(&tok, &sentences, &tags, 64).unwrap();
    assert_eq!(f.windows_split, 1);
    assert_eq!(f.truncated_words, 0);
    let windows = f.features.iter().filter(|x| x.sentence == 1).count();
    assert!(windows >= 5, "{windows} windows");
    for feat in &f.features {
        // [CLS] first, [SEP] last, nothing cut inside a word: the window's
        // tokens are exactly the encoding of its words.
        let words: Vec<usize> = feat.word_of_token.iter().flatten().copied().collect();
        let (a, b) = (words[0], *words.last().unwrap() + 1);
        assert_eq!(words, (a..b).collect::<Vec<_>>());
        let enc = tok
            .inner()
            .encode(&sentences[feat.sentence].words[a..b], true)
            .unwrap();
        assert_eq!(feat.ids, enc.get_ids());
    }
    check_windows(&f.features, &sentences, &tags, 64);
}

#[test]
fn real_data_features_round_trip() {
    let tok = minilm();
    let t = task("ner/conll2003");
    let train = read("ner/conll2003", Split::Train);
    let valid = read("ner/conll2003", Split::Dev);
    let tags = t.tag_names(&train);
    let start = std::time::Instant::now();
    let f = featurize_tagging(&tok, &valid, &tags, 128).unwrap();
    eprintln!(
        "conll2003 valid: {} features, {} split, {} empty words, {:?}",
        f.features.len(),
        f.windows_split,
        f.empty_words,
        start.elapsed()
    );
    assert_eq!(f.unknown_tags, 0);
    check_windows(&f.features, &valid, &tags, 128);
    // Perfect predictions score 1 with seqeval.
    let argmax: Vec<Vec<usize>> = f
        .features
        .iter()
        .map(|x| x.labels.iter().map(|l| (*l).max(0) as usize).collect())
        .collect();
    let lengths: Vec<usize> = valid.iter().map(|s| s.words.len()).collect();
    let pred: Vec<Vec<String>> = word_predictions(&f.features, &argmax, &lengths)
        .into_iter()
        .map(|s| s.into_iter().map(|i| tags[i].clone()).collect())
        .collect();
    let gold: Vec<Vec<String>> = valid.iter().map(|s| s.tags.clone().unwrap()).collect();
    let r = evaluate(&gold, &pred, Mode::Strict).unwrap();
    assert_eq!((r.f1, r.gold_entities), (1.0, 5942));

    // WNUT-17 at a small max_len: many windows, odd tokens (emoji, URLs).
    let wnut = read("ner/wnut17", Split::Dev);
    let wtags = task("ner/wnut17").tag_names(&read("ner/wnut17", Split::Train));
    let f = featurize_tagging(&tok, &wnut, &wtags, 24).unwrap();
    eprintln!(
        "wnut17 dev at 24: {} features, {} split, {} empty words, {} truncated words",
        f.features.len(),
        f.windows_split,
        f.empty_words,
        f.truncated_words
    );
    assert!(f.windows_split > 0);
    check_windows(&f.features, &wnut, &wtags, 24);
}

#[test]
fn unknown_tags_and_unlabeled_sentences() {
    let tok = minilm();
    let tags = strings("O B-PER I-PER");
    let s = vec![
        sentence("John visited Paris", "B-PER O B-LOC"),
        TaggedSentence {
            words: strings("Mary sleeps"),
            tags: None,
            predicate: None,
        },
    ];
    let f = featurize_tagging(&tok, &s, &tags, 32).unwrap();
    assert_eq!(f.unknown_tags, 1);
    let l: Vec<i64> = f.features[0]
        .labels
        .iter()
        .copied()
        .filter(|l| *l >= 0)
        .collect();
    assert_eq!(l, [1, 0, 0]); // B-LOC trained as O
    assert!(f.features[1].labels.iter().all(|l| *l == -100));
    assert_eq!(f.features[1].word_of_token.iter().flatten().count(), 2);

    let e = featurize_tagging(&tok, &s, &strings("B-PER I-PER"), 32)
        .unwrap_err()
        .to_string();
    assert_has(
        &e,
        &["sentence 0", "tag \"O\" is not in the tag set", "no \"O\""],
    );
    let bad = vec![sentence("a b", "O")];
    let e = featurize_tagging(&tok, &bad, &tags, 32)
        .unwrap_err()
        .to_string();
    assert_has(&e, &["sentence 0", "1 tags for 2 words"]);
    let e = featurize_tagging(&tok, &s, &tags, 2)
        .unwrap_err()
        .to_string();
    assert_has(&e, &["max_len 2", "no room"]);
}

#[test]
fn roberta_words_get_a_prefix_space() {
    // tasks/utils.py: ADD_PREFIX_SPACE['roberta'] = True, so each word is
    // encoded as it would be after a space inside a sentence.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-roberta");
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let s = sentence("Hello world again", "O O O");
    let f = featurize_tagging(&tok, &[s], &strings("O"), 32).unwrap();
    let enc = tok.inner().encode(" Hello world again", true).unwrap();
    assert_eq!(f.features[0].ids, enc.get_ids());
    // Without the prefix space the first word would differ.
    let bare = tok.inner().encode("Hello world again", true).unwrap();
    assert_ne!(bare.get_ids(), enc.get_ids());
}

// ---------------------------------------------------------------------------
// SRL: the official line format on a hand-made file.

const SRL_FILE: &str = "\
2 The cat sat on the mat . ||| B-A0 I-A0 B-V B-AM-LOC I-AM-LOC I-AM-LOC O
0 Hakawati performers rehearsed . ||| B-V O O O

3 Officials said they would resign ||| B-A0 B-V B-A1 I-A1 I-A1
";

#[test]
fn srl_format() {
    let dir = tempfile::tempdir().unwrap();
    let t = task("srl/conll05");
    let path = write(dir.path(), "conll05.devel.txt", SRL_FILE);
    assert_eq!(t.split_path(dir.path(), Split::Dev), path);
    let s = t.read(&path).unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].words, strings("The cat sat on the mat ."));
    assert_eq!(s[0].predicate, Some(2));
    assert_eq!(
        s[0].tags.as_deref().unwrap(),
        strings("B-A0 I-A0 B-V B-AM-LOC I-AM-LOC I-AM-LOC O")
    );
    assert_eq!((s[1].predicate, s[2].predicate), (Some(0), Some(3)));

    let tags = t.tag_names(&s);
    assert_eq!(tags.len(), 106);
    assert_eq!(tags[73], "O");
    let tok = minilm();
    let f = featurize_tagging(&tok, &s, &tags, 64).unwrap();
    assert_eq!(f.features.len(), 3);
    // As the official code: tokens + ["[SEP]", tokens[index]], one sequence.
    for (feat, sent) in f.features.iter().zip(&s) {
        let mut words = sent.words.clone();
        words.push("[SEP]".into());
        words.push(sent.words[sent.predicate.unwrap()].clone());
        let enc = tok.inner().encode(words.as_slice(), true).unwrap();
        assert_eq!(feat.ids, enc.get_ids());
        assert_eq!(feat.type_ids, vec![0; feat.ids.len()]);
        // Only the sentence's words are labeled, the predicate segment not.
        let n = sent.words.len();
        let labeled: Vec<usize> = feat.word_of_token.iter().flatten().copied().collect();
        assert_eq!(labeled, (0..n).collect::<Vec<_>>());
        let sep = tok.token_to_id("[SEP]").unwrap();
        let first_sep = feat.ids.iter().position(|i| *i == sep).unwrap();
        assert!(feat.labels[first_sep..].iter().all(|l| *l == -100));
    }
    check_windows(&f.features, &s, &tags, 64);

    // A long SRL sentence: every window carries `[SEP] predicate`.
    let words: Vec<String> = (0..120).map(|i| format!("w{i}")).collect();
    let mut stags = vec!["O".to_string(); 120];
    stags[50] = "B-V".into();
    let long = vec![TaggedSentence {
        words,
        tags: Some(stags),
        predicate: Some(50),
    }];
    let f = featurize_tagging(&tok, &long, &tags, 32).unwrap();
    assert!(f.features.len() > 3 && f.windows_split == 1);
    let verb = tok.inner().encode(&["[SEP]", "w50"][..], true).unwrap();
    let tail = &verb.get_ids()[1..]; // [SEP] w50-pieces [SEP]
    for feat in &f.features {
        assert!(feat.ids.ends_with(tail), "{:?}", feat.ids);
    }
    check_windows(&f.features, &long, &tags, 32);

    // conll12: the official 116 tags, "O" at 6.
    let t12 = task("srl/conll12");
    let tags12 = t12.tag_names(&[]);
    assert_eq!((tags12.len(), tags12[6].as_str()), (116, "O"));
    assert!(t12
        .split_path(dir.path(), Split::Test)
        .ends_with("conll2012.test.txt"));
}

// ---------------------------------------------------------------------------
// custom/conll.

#[test]
fn custom_columns() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "train.txt",
        "-DOCSTART- -X- O\n\nJohn NNP B-PER\nlives VBZ O\n\nin IN O\nRome NNP B-LOC\n",
    );
    let t = task("custom/conll");
    assert_eq!(t.split_path(dir.path(), Split::Train), p);
    let s = t.read(&p).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s[1].words, strings("in Rome"));
    assert_eq!(s[1].tags.as_deref().unwrap(), strings("O B-LOC"));
    assert_eq!(t.tag_names(&s), strings("O B-LOC B-PER"));

    // Chosen columns; tab-separated words may hold spaces.
    let p = write(dir.path(), "dev.tsv", "B-PER\tx\tNew York\nO\ty\tis\n");
    let t2 = tagging_task_by_name(
        "custom/conll",
        &TaggingOptions {
            token_col: 2,
            tag_col: Some(0),
        },
    )
    .unwrap();
    assert_eq!(t2.split_path(dir.path(), Split::Dev), p);
    let s = t2.read(&p).unwrap();
    assert_eq!(s[0].words, ["New York", "is"]);
    assert_eq!(s[0].tags.as_deref().unwrap(), strings("B-PER O"));

    // One column: unlabeled text.
    let p = write(dir.path(), "test.txt", "Hello\nworld\n\nBye\n");
    let s = t.read(&p).unwrap();
    assert_eq!((s.len(), s[0].tags.clone()), (2, None));

    let e = tagging_task_by_name(
        "custom/conll",
        &TaggingOptions {
            token_col: 1,
            tag_col: Some(1),
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert_has(&e, &["both 1"]);
}

// ---------------------------------------------------------------------------
// Raw text.

#[test]
fn entity_spans_with_char_offsets() {
    let text = "Angela Merkel  met Müller in São Paulo (Brazil) on Monday.";
    let words = split_words(text);
    let got: Vec<&str> = words.iter().map(|w| w.0.as_str()).collect();
    assert_eq!(
        got,
        strings("Angela Merkel met Müller in São Paulo ( Brazil ) on Monday .")
    );
    for (w, s, e) in &words {
        let chars: String = text.chars().skip(*s).take(e - s).collect();
        assert_eq!(&chars, w);
    }
    let tags = strings("B-PER I-PER O B-PER O B-LOC I-LOC O I-LOC O O O O");
    let spans = entity_spans(&words, &tags, text);
    let got: Vec<(&str, usize, usize, &str)> = spans
        .iter()
        .map(|s| (s.label.as_str(), s.start, s.end, s.text.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("PER", 0, 13, "Angela Merkel"),
            ("PER", 19, 25, "Müller"),
            ("LOC", 29, 38, "São Paulo"),
            // An I- without B- starts an entity (conlleval-style).
            ("LOC", 40, 46, "Brazil"),
        ]
    );
    assert!(entity_spans(&[], &[], "").is_empty());
}

// ---------------------------------------------------------------------------
// What `predict` makes of its input.

/// CoNLL-2003's own layout, as its valid.txt starts.
const CONLL2003_SMALL: &str = "-DOCSTART- -X- -X- O\n\nCRICKET NNP B-NP O\n- : O O\n\
    LEICESTERSHIRE NNP B-NP B-ORG\n\nLONDON NNP B-NP B-LOC\n1996-08-30 CD I-NP O\n";

#[test]
fn a_txt_input_in_column_form_reads_as_columns() {
    let dir = tempfile::tempdir().unwrap();
    let t = task("ner/conll2003");
    let conll = write(dir.path(), "valid.conll", CONLL2003_SMALL);
    let txt = write(dir.path(), "valid.txt", CONLL2003_SMALL);
    let as_conll = read_tagging_input(t.as_ref(), &conll).unwrap();
    assert_eq!((as_conll.raw.is_none(), as_conll.read_as), (true, None));
    let as_txt = read_tagging_input(t.as_ref(), &txt).unwrap();
    assert_eq!(as_txt.sentences, as_conll.sentences);
    assert_eq!(as_txt.sentences.len(), 2);
    assert_eq!(
        as_txt.sentences[0].words,
        strings("CRICKET - LEICESTERSHIRE")
    );
    assert!(as_txt.raw.is_none());
    assert_eq!(
        as_txt.read_as.as_deref(),
        Some("read as CoNLL columns (token POS chunk NER), not raw text: it has a -DOCSTART- line")
    );

    // Without -DOCSTART-: a tag ending every line (IOBES too) is enough; the
    // extension's case does not matter.
    let c = task("custom/conll");
    let p = write(dir.path(), "NER.TXT", "John\tS-PER\r\nsleeps\tO\r\n");
    let got = read_tagging_input(c.as_ref(), &p).unwrap();
    assert_eq!(got.sentences, vec![sentence("John sleeps", "S-PER O")]);
    assert_has(
        got.read_as.as_deref().unwrap(),
        &[
            "read as CoNLL columns (word in column 0, tag in the last column",
            "every line ends in a tag",
        ],
    );

    // Raw text, whatever the case of .txt: one line without a tag is enough.
    let p = write(dir.path(), "RAW.Txt", "John B-PER\nJohn visited Paris.\n");
    let got = read_tagging_input(c.as_ref(), &p).unwrap();
    assert_eq!(
        got.read_as.as_deref(),
        Some("read as raw text, one text per line")
    );
    assert_eq!(got.sentences[0].words, strings("John B-PER"));
    assert_eq!(got.sentences[1].tags, None);
    assert_eq!(got.raw.unwrap().len(), 2);
}

#[test]
fn raw_text_drops_a_byte_order_mark() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "bom.txt",
        "\u{feff}John lives in Paris.\r\n\r\nMüller too\r\n",
    );
    let got = read_tagging_input(task("ner/conll2003").as_ref(), &p).unwrap();
    let raw = got.raw.unwrap();
    let line = |text: &str, words: &[(&str, usize, usize)]| {
        let words = words
            .iter()
            .map(|(w, s, e)| (w.to_string(), *s, *e))
            .collect();
        (text.to_string(), words)
    };
    assert_eq!(
        raw,
        vec![
            line(
                "John lives in Paris.",
                &[
                    ("John", 0, 4),
                    ("lives", 5, 10),
                    ("in", 11, 13),
                    ("Paris", 14, 19),
                    (".", 19, 20)
                ]
            ),
            line("Müller too", &[("Müller", 0, 6), ("too", 7, 10)]),
        ]
    );
    assert_eq!(got.sentences[0].words, strings("John lives in Paris ."));
    // A BOM before -DOCSTART- does not hide it either.
    let p = write(
        dir.path(),
        "bom_conll.txt",
        &format!("\u{feff}{CONLL2003_SMALL}"),
    );
    let got = read_tagging_input(task("ner/conll2003").as_ref(), &p).unwrap();
    assert_eq!(got.sentences.len(), 2);
}

#[test]
fn json_input_to_a_tagger_says_what_taggers_read() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = "\n{\"text\": \"John lives in Paris.\"}\n{\"text\": \"Mary too.\"}\n";
    let p = write(dir.path(), "inputs.jsonl", jsonl);
    let e = read_tagging_input(task("custom/conll").as_ref(), &p)
        .unwrap_err()
        .to_string();
    assert_has(
        &e,
        &[
            "inputs.jsonl: line 2: this is JSON, but a custom/conll tagger reads raw text \
             (.txt, one text per line) or CoNLL columns (word in column 0, tag in the last column",
        ],
    );
    let p = write(dir.path(), "inputs.json", "[\n  {\"text\": \"John\"}\n]\n");
    let e = read_tagging_input(task("ner/conll2003").as_ref(), &p)
        .unwrap_err()
        .to_string();
    assert_has(
        &e,
        &[
            "inputs.json: line 1: this is JSON",
            "or CoNLL columns (token POS chunk NER)",
        ],
    );
    // A column file whose first word is a bracket is no JSON.
    let p = write(dir.path(), "brackets.conll", "[ O\nx B-A\n] O\n");
    let got = read_tagging_input(task("custom/conll").as_ref(), &p).unwrap();
    assert_eq!(got.sentences, vec![sentence("[ x ]", "O B-A O")]);
    // conll04 reads JSON: its own errors stay.
    let p = write(dir.path(), "spert.json", jsonl);
    let e = read_tagging_input(task("ner/conll04").as_ref(), &p)
        .unwrap_err()
        .to_string();
    assert_has(&e, &["spert.json", "expected a SpERT array"]);
}

/// `ptuning <args>`: exit status, stdout, stderr.
fn ptuning(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ptuning"))
        .args(args)
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

#[test]
fn a_tagger_predicts_and_evaluates_what_it_is_given() {
    // A tiny custom/conll tagger (PER and LOC, no MISC) on the tiny model:
    // its predictions are arbitrary; how its inputs are read is not.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train_text = "John B-PER\nSmith I-PER\nvisited O\nParis B-LOC\n\nMary B-PER\nslept O\n";
    write(d, "train.conll", &train_text.repeat(2));
    write(d, "dev.conll", train_text);
    let config = TrainConfig {
        task: "custom/conll".into(),
        data: d.to_path_buf(),
        out: d.join("run"),
        model: Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny-bert")
            .display()
            .to_string(),
        epochs: 1,
        batch_size: 2,
        prefix_len: 4,
        ..TrainConfig::default()
    };
    let options = TrainOptions {
        quiet: true,
        ..TrainOptions::default()
    };
    train(&config, options).unwrap();
    let run = config.out.as_os_str();
    let predict = |input: &Path| {
        ptuning(&[
            "predict".as_ref(),
            "--run".as_ref(),
            run,
            "--input".as_ref(),
            input.as_os_str(),
        ])
    };

    // Column form named .txt: the same predictions as named .conll.
    let columns = "-DOCSTART- O\n\nJohn B-PER\nvisited O\nParis B-LOC\n\nMary B-PER\n";
    let (ok_c, conll_out, _) = predict(&write(d, "in.conll", columns));
    let (ok_t, txt_out, txt_err) = predict(&write(d, "in.txt", columns));
    assert!(ok_c && ok_t, "{txt_err}");
    assert_eq!(txt_out, conll_out);
    let lines: Vec<Value> = txt_out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0]["words"],
        serde_json::json!(["John", "visited", "Paris"])
    );
    assert_has(
        &txt_err,
        &[
            "2 sentences (read as CoNLL columns",
            "not raw text: it has a -DOCSTART- line",
            "in.txt",
        ],
    );

    // Raw text with a BOM: no BOM word, offsets into the text as written.
    let (ok, out, err) = predict(&write(d, "bom.txt", "\u{feff}John visited Paris.\r\n"));
    assert!(ok, "{err}");
    let line: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["text"], "John visited Paris.");
    assert_eq!(
        line["words"],
        serde_json::json!(["John", "visited", "Paris", "."])
    );
    for e in line["entities"].as_array().unwrap() {
        let (start, end) = (
            e["start"].as_u64().unwrap() as usize,
            e["end"].as_u64().unwrap() as usize,
        );
        let text: String = "John visited Paris."
            .chars()
            .skip(start)
            .take(end - start)
            .collect();
        assert_eq!(e["text"], text.as_str());
    }
    assert_has(
        &err,
        &["1 text (read as raw text, one text per line; 0 split"],
    );

    // JSON Lines: what a classifier reads, not a tagger.
    let (ok, _, err) = predict(&write(
        d,
        "in.jsonl",
        "{\"text\": \"John visited Paris.\"}\n",
    ));
    assert!(!ok);
    assert_has(
        &err,
        &[
            "in.jsonl: line 1: this is JSON",
            "raw text (.txt, one text per line) or CoNLL columns",
        ],
    );

    // A gold MISC entity the adapter cannot predict is missed: of the 3 gold
    // entities (PER, LOC, MISC) at most 2 are found.
    let misc = write(
        d,
        "misc.conll",
        "John B-PER\nvisited O\nParis B-LOC\nfor O\nEuro B-MISC\n96 I-MISC\n",
    );
    let (ok, out, err) = ptuning(&[
        "eval".as_ref(),
        "--json".as_ref(),
        "--run".as_ref(),
        run,
        "--data".as_ref(),
        misc.as_os_str(),
    ]);
    assert!(ok, "{err}");
    let m: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["gold_tags_outside_tag_set"], 2.0);
    assert_eq!(m["f1_MISC"], 0.0);
    assert!(m["recall"].as_f64().unwrap() <= 2.0 / 3.0, "{m}");
    assert!(m.get("unknown_tags").is_none());
    let (_, out, _) = ptuning(&[
        "eval".as_ref(),
        "--run".as_ref(),
        run,
        "--data".as_ref(),
        misc.as_os_str(),
    ]);
    assert_has(
        &out,
        &[
            "1 sentence (0 split into windows of",
            "; 2 gold tags outside the tag set, which the adapter cannot predict)",
        ],
    );
}

// ---------------------------------------------------------------------------
// seqeval against Python seqeval 1.2.2.

fn close(a: f64, b: &Value, what: &str) {
    let b = b.as_f64().unwrap_or_else(|| panic!("{what}: {b}"));
    assert!((a - b).abs() <= 1e-9, "{what}: ours {a}, seqeval {b}");
}

fn check_result(
    name: &str,
    mode: Mode,
    ours: ptuning::Result<seqeval::SeqevalReport>,
    want: &Value,
) {
    let what = format!("{name} {mode:?}");
    if let Some(err) = want.get("error") {
        assert!(
            ours.is_err(),
            "{what}: seqeval raised {err}, we returned {ours:?}"
        );
        return;
    }
    let r = ours.unwrap_or_else(|e| panic!("{what}: {e}"));
    close(
        r.precision,
        &want["precision"],
        &format!("{what} precision"),
    );
    close(r.recall, &want["recall"], &format!("{what} recall"));
    close(r.f1, &want["f1"], &format!("{what} f1"));
    if !want["accuracy"].is_null() {
        close(r.accuracy, &want["accuracy"], &format!("{what} accuracy"));
    }
    let per = want["per_type"].as_object().unwrap();
    assert_eq!(
        r.per_type.keys().collect::<Vec<_>>(),
        per.keys().collect::<Vec<_>>(),
        "{what}: types"
    );
    for (ty, s) in &r.per_type {
        let w = &per[ty];
        close(
            s.precision,
            &w["precision"],
            &format!("{what} {ty} precision"),
        );
        close(s.recall, &w["recall"], &format!("{what} {ty} recall"));
        close(s.f1, &w["f1"], &format!("{what} {ty} f1"));
        assert_eq!(
            s.support as u64,
            w["support"].as_u64().unwrap(),
            "{what} {ty} support"
        );
    }
}

fn tag_lists(v: &Value) -> Vec<Vec<String>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn seqeval_matches_python() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seqeval/cases.json");
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    let mut checked = 0;
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let (gold, pred) = if let Some(edits) = c.get("edits") {
            // Gold from the real file, prediction = gold + edits.
            let gold: Vec<Vec<String>> = read("ner/conll2003", Split::Dev)
                .into_iter()
                .map(|s| s.tags.unwrap())
                .collect();
            assert_eq!(gold.len() as u64, c["sentences"].as_u64().unwrap());
            let mut pred = gold.clone();
            for e in edits.as_array().unwrap() {
                let (s, i) = (
                    e[0].as_u64().unwrap() as usize,
                    e[1].as_u64().unwrap() as usize,
                );
                pred[s][i] = e[2].as_str().unwrap().to_string();
            }
            (gold, pred)
        } else {
            (tag_lists(&c["gold"]), tag_lists(&c["pred"]))
        };
        for (mode, key) in [(Mode::Default, "default"), (Mode::Strict, "strict")] {
            check_result(name, mode, evaluate(&gold, &pred, mode), &c[key]);
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * cases.len());
}

// ---------------------------------------------------------------------------
// Reading errors: file, line, what was expected.

#[test]
fn column_errors() {
    let dir = tempfile::tempdir().unwrap();
    let t = task("ner/conll2003");
    let p = write(dir.path(), "bad.txt", "EU NNP B-NP B-ORG\nrejects VBZ O\n");
    let e = err_of(t.as_ref(), &p);
    assert_has(
        &e,
        &[
            "bad.txt",
            "line 2",
            "expected 4 columns (token POS chunk NER), found 3",
        ],
    );

    let p = write(
        dir.path(),
        "tag.txt",
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP ORG\n",
    );
    let e = err_of(t.as_ref(), &p);
    assert_has(
        &e,
        &["tag.txt", "line 3", "\"ORG\"", "not in IOB form", "B-TYPE"],
    );

    let p = write(dir.path(), "empty.txt", "-DOCSTART- -X- -X- O\n\n\n");
    let e = err_of(t.as_ref(), &p);
    assert_has(&e, &["empty.txt", "no examples"]);

    let e = err_of(t.as_ref(), &dir.path().join("missing.txt"));
    assert_has(&e, &["missing.txt"]);

    let w = task("ner/wnut17");
    let p = write(
        dir.path(),
        "w.conll",
        "@user\tO\nParis\tB-location\textra\n",
    );
    let e = err_of(w.as_ref(), &p);
    assert_has(
        &e,
        &[
            "w.conll",
            "line 2",
            "expected 2 columns (token tag), found 3",
        ],
    );
    let p = write(dir.path(), "w2.conll", "Paris\tE-location\n");
    assert_has(&err_of(w.as_ref(), &p), &["line 1", "\"E-location\""]);

    let c = task("custom/conll");
    let p = write(dir.path(), "c.txt", "a x O\nb y B-X\nc O\n");
    let e = err_of(c.as_ref(), &p);
    assert_has(
        &e,
        &[
            "c.txt",
            "line 3",
            "expected 3 columns as on the first line, found 2",
        ],
    );
    let p = write(dir.path(), "c2.txt", "a x O\nb y X\n");
    assert_has(
        &err_of(c.as_ref(), &p),
        &["line 2", "\"X\"", "not in IOB form"],
    );
    let c3 = tagging_task_by_name(
        "custom/conll",
        &TaggingOptions {
            token_col: 0,
            tag_col: Some(3),
        },
    )
    .unwrap();
    let p = write(dir.path(), "c3.txt", "\na x O\n");
    assert_has(
        &err_of(c3.as_ref(), &p),
        &[
            "line 2",
            "expected at least 4 columns",
            "tag column 3",
            "found 3",
        ],
    );
}

#[test]
fn spert_errors() {
    let dir = tempfile::tempdir().unwrap();
    let t = task("ner/conll04");
    let good = r#"{"tokens": ["a", "b"], "entities": [{"type": "Loc", "start": 0, "end": 1}], "relations": []}"#;
    let bad = r#"{"tokens": ["a", "b"], "entities": [{"type": "Peop", "start": 1, "end": 3}]}"#;
    let p = write(
        dir.path(),
        "span.json",
        &format!("[\n  {good},\n  {bad}\n]"),
    );
    let e = err_of(t.as_ref(), &p);
    assert_has(
        &e,
        &[
            "span.json",
            "line 3",
            "sentence 1",
            "entity 0 (Peop) spans tokens 1..3",
            "2 tokens",
        ],
    );

    let overlap = r#"[{"tokens": ["a", "b"], "entities": [{"type": "Loc", "start": 0, "end": 2}, {"type": "Org", "start": 1, "end": 2}]}]"#;
    let p = write(dir.path(), "overlap.json", overlap);
    assert_has(&err_of(t.as_ref(), &p), &["line 1", "entity 1", "overlaps"]);

    let p = write(
        dir.path(),
        "syntax.json",
        "[\n{\"tokens\": [\"a\"],\n \"entities\": [}\n]",
    );
    assert_has(
        &err_of(t.as_ref(), &p),
        &["syntax.json", "invalid JSON", "line 3"],
    );

    let p = write(dir.path(), "field.json", "[{\"tokens\": [\"a\"]}]");
    assert_has(&err_of(t.as_ref(), &p), &["field.json", "entities"]);

    let p = write(dir.path(), "empty.json", "");
    assert_has(&err_of(t.as_ref(), &p), &["empty.json", "no examples"]);
    let p = write(dir.path(), "none.json", "[]");
    assert_has(&err_of(t.as_ref(), &p), &["none.json", "no examples"]);
}

#[test]
fn srl_errors() {
    let dir = tempfile::tempdir().unwrap();
    let t = task("srl/conll12");
    let cases = [
        ("x The cat ||| O B-V\n", "line 1", "predicate's word index"),
        ("1 The cat O B-V\n", "line 1", "found 0"),
        ("\n1 The cat ||| O\n", "line 2", "2 words but 1 tags"),
        (
            "2 The cat ||| O B-V\n",
            "line 1",
            "predicate index 2 is out of range",
        ),
        ("1 The cat ||| O V\n", "line 1", "\"V\""),
        ("0 ||| \n", "line 1", "no words"),
        ("\n\n", "srl.txt", "no examples"),
    ];
    for (i, (text, line, what)) in cases.iter().enumerate() {
        let p = write(dir.path(), "srl.txt", text);
        let e = err_of(t.as_ref(), &p);
        assert_has(&e, &["srl.txt", line, what]);
        let _ = i;
    }
}

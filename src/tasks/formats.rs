//! Small, strict readers for the three file formats the tasks use: JSON Lines,
//! TSV (tab split, no quoting: the GLUE convention) and CSV (RFC 4180).
//!
//! Every reader returns records tagged with the 1-based line number they start
//! on, so every later error (a missing field, an unknown label) can say
//! "line N". Errors here already name the file and the line.

use std::path::Path;

use serde_json::{Map, Value};

use crate::{Error, Result};

/// One record of a delimited file: the 1-based line it starts on and its fields.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub line: usize,
    pub fields: Vec<String>,
}

/// One object of a JSON Lines file and the 1-based line it sits on.
#[derive(Debug, Clone)]
pub(crate) struct JsonRecord {
    pub line: usize,
    pub object: Map<String, Value>,
}

/// Reads a whole file as UTF-8 and drops a leading byte-order mark (the GLUE
/// MRPC files start with one).
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
        invalid(path, line, "the file is not valid UTF-8")
    })?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// A data file's content error at a line: "`path`: line N: message".
pub(crate) fn invalid(path: &Path, line: usize, message: impl std::fmt::Display) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        message: format!("line {line}: {message}"),
    }
}

/// A JSON error at a line: rendered "`path`: invalid JSON: line N: message".
pub(crate) fn json_error(path: &Path, line: usize, message: impl std::fmt::Display) -> Error {
    Error::Json {
        path: path.to_path_buf(),
        message: format!("line {line}: {message}"),
    }
}

/// The error for a file (or split) that holds no example at all.
pub(crate) fn no_examples(path: &Path, why: &str) -> Error {
    Error::InvalidArgument(format!("{}: no examples ({why})", path.display()))
}

/// Splits text into lines with their 1-based numbers, dropping a trailing
/// `\r` (CRLF files) and skipping blank lines (a final newline, or a file
/// without one, both read the same).
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty())
}

/// Reads a JSON Lines file: one JSON object per non-blank line.
///
/// Errors: malformed JSON or a value that is not an object (with the line and
/// serde's column), and an empty file ("no examples").
pub(crate) fn read_jsonl(path: &Path) -> Result<Vec<JsonRecord>> {
    let text = read_text(path)?;
    let mut records = Vec::new();
    for (line, raw) in numbered_lines(&text) {
        let value: Value = serde_json::from_str(raw).map_err(|e| {
            // serde says "… at line 1 column 31" about the single line it saw;
            // keep its reason and report the file's line.
            let reason = e.to_string();
            let reason = reason.split(" at line ").next().unwrap_or_default();
            json_error(
                path,
                line,
                format!("malformed JSON at column {}: {reason}", e.column()),
            )
        })?;
        match value {
            Value::Object(object) => records.push(JsonRecord { line, object }),
            other => {
                return Err(json_error(
                    path,
                    line,
                    format!("expected a JSON object, found {}", type_name(&other)),
                ))
            }
        }
    }
    if records.is_empty() {
        return Err(no_examples(path, "the file has no JSON lines"));
    }
    Ok(records)
}

/// Reads a tab-separated file with quoting disabled: every non-blank line is
/// split on `\t`, quotes are ordinary characters (GLUE's MRPC and SST-2 have
/// unbalanced `"` inside sentences, so CSV-style quoting would merge rows).
/// Column counts are checked by the caller, which knows the layout.
pub(crate) fn read_tsv(path: &Path) -> Result<Vec<Row>> {
    let text = read_text(path)?;
    let rows: Vec<Row> = numbered_lines(&text)
        .map(|(line, l)| Row {
            line,
            fields: l.split('\t').map(str::to_string).collect(),
        })
        .collect();
    if rows.is_empty() {
        return Err(no_examples(path, "the file is empty"));
    }
    Ok(rows)
}

/// Reads an RFC 4180 CSV file: fields separated by `,`, records by CRLF or
/// LF; a field in double quotes may hold `,`, line breaks and `""` (one
/// literal quote). A quote inside an unquoted field is kept literally (a
/// common lenient reading); text after a closing quote other than `,` or the
/// end of the record is an error, and so is a quote left open at the end.
/// Blank lines are skipped.
pub(crate) fn read_csv(path: &Path) -> Result<Vec<Row>> {
    let text = read_text(path)?;
    let rows = parse_csv(&text).map_err(|(line, msg)| invalid(path, line, msg))?;
    if rows.is_empty() {
        return Err(no_examples(path, "the file is empty"));
    }
    Ok(rows)
}

/// The CSV state machine behind [`read_csv`]; errors are (line, message).
pub(crate) fn parse_csv(text: &str) -> std::result::Result<Vec<Row>, (usize, String)> {
    let mut rows = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1usize; // current physical line
    let mut record_line = 1usize; // line the current record started on
    let mut quote_line = 0usize; // line of the opening quote of the current field
    let mut chars = text.chars().peekable();
    // States: at the start of a field, inside an unquoted field, inside a
    // quoted field, just after the closing quote of a quoted field.
    #[derive(PartialEq)]
    enum S {
        Start,
        Plain,
        Quoted,
        AfterQuote,
    }
    let mut state = S::Start;
    let end_record = |fields: &mut Vec<String>, field: &mut String, rows: &mut Vec<Row>, at| {
        fields.push(std::mem::take(field));
        let record = std::mem::take(fields);
        // A blank line is one empty field: skip it.
        if !(record.len() == 1 && record[0].is_empty()) {
            rows.push(Row {
                line: at,
                fields: record,
            });
        }
    };
    while let Some(c) = chars.next() {
        match state {
            S::Quoted => {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        field.push('"');
                    } else {
                        state = S::AfterQuote;
                    }
                } else {
                    if c == '\n' {
                        line += 1;
                    }
                    field.push(c);
                }
            }
            _ => match c {
                ',' => {
                    fields.push(std::mem::take(&mut field));
                    state = S::Start;
                }
                '\r' if chars.peek() == Some(&'\n') => {}
                '\n' => {
                    end_record(&mut fields, &mut field, &mut rows, record_line);
                    line += 1;
                    record_line = line;
                    state = S::Start;
                }
                '"' if state == S::Start => {
                    quote_line = line;
                    state = S::Quoted;
                }
                _ if state == S::AfterQuote => {
                    // A stray quote inside a quoted field ends it early; where
                    // the field opened on an earlier line, that is the place to look.
                    let opened = match quote_line {
                        l if l < line => format!(" (the quoted field opened on line {l})"),
                        _ => String::new(),
                    };
                    return Err((
                        line,
                        format!("expected ',' or the end of the line after a closing quote, found {c:?}{opened}"),
                    ));
                }
                _ => {
                    field.push(c);
                    state = S::Plain;
                }
            },
        }
    }
    if state == S::Quoted {
        return Err((
            quote_line,
            "quoted field is never closed (missing '\"')".to_string(),
        ));
    }
    if !(fields.is_empty() && field.is_empty() && state == S::Start) {
        end_record(&mut fields, &mut field, &mut rows, record_line);
    }
    Ok(rows)
}

/// JSON's name for a value's type, for "wrong type" messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Where a JSON value sits, for error messages: the file, the line and a
/// path inside the line's object (empty at top level, else e.g.
/// `passage.questions[2].`).
#[derive(Clone, Copy)]
pub(crate) struct At<'a> {
    pub path: &'a Path,
    pub line: usize,
    pub prefix: &'a str,
}

impl At<'_> {
    /// A content error at this place (the JSON itself parsed).
    pub fn error(&self, message: impl std::fmt::Display) -> Error {
        invalid(self.path, self.line, message)
    }

    /// `obj[key]`, or "missing field" naming the full path of the key.
    pub fn field<'v>(&self, obj: &'v Map<String, Value>, key: &str) -> Result<&'v Value> {
        obj.get(key)
            .ok_or_else(|| self.error(format!("missing field \"{}{key}\"", self.prefix)))
    }

    /// A string field.
    pub fn str<'v>(&self, obj: &'v Map<String, Value>, key: &str) -> Result<&'v str> {
        match self.field(obj, key)? {
            Value::String(s) => Ok(s),
            other => Err(self.wrong_type(key, "a string", other)),
        }
    }

    /// An object field.
    pub fn object<'v>(
        &self,
        obj: &'v Map<String, Value>,
        key: &str,
    ) -> Result<&'v Map<String, Value>> {
        match self.field(obj, key)? {
            Value::Object(o) => Ok(o),
            other => Err(self.wrong_type(key, "an object", other)),
        }
    }

    /// An array field.
    pub fn array<'v>(&self, obj: &'v Map<String, Value>, key: &str) -> Result<&'v [Value]> {
        match self.field(obj, key)? {
            Value::Array(a) => Ok(a),
            other => Err(self.wrong_type(key, "an array", other)),
        }
    }

    /// A non-negative integer field, or one written as a string (AX-b's
    /// `"idx": "0"`).
    pub fn index(&self, obj: &Map<String, Value>, key: &str) -> Result<u64> {
        let v = self.field(obj, key)?;
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| self.wrong_type(key, "a non-negative integer", v))
    }

    /// "field "k" must be X, found Y".
    pub fn wrong_type(&self, key: &str, expected: &str, found: &Value) -> Error {
        let shown = match found {
            Value::String(s) => format!("a string {s:?}"),
            Value::Number(n) => format!("the number {n}"),
            Value::Bool(b) => format!("the boolean {b}"),
            other => type_name(other).to_string(),
        };
        self.error(format!(
            "field \"{}{key}\" must be {expected}, found {shown}",
            self.prefix
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(rows: &[Row]) -> Vec<Vec<&str>> {
        rows.iter()
            .map(|r| r.fields.iter().map(String::as_str).collect())
            .collect()
    }

    #[test]
    fn csv_plain_and_quoted() {
        let rows = parse_csv("a,b,c\n1,\"x, y\",\"he said \"\"hi\"\"\"\r\n").unwrap();
        assert_eq!(
            fields(&rows),
            vec![vec!["a", "b", "c"], vec!["1", "x, y", "he said \"hi\""]]
        );
        assert_eq!(rows[1].line, 2);
    }

    #[test]
    fn csv_newline_in_quotes_keeps_start_line() {
        let rows = parse_csv("t,l\n\"two\nlines\",pos\nlast,neg").unwrap();
        assert_eq!(
            fields(&rows),
            vec![
                vec!["t", "l"],
                vec!["two\nlines", "pos"],
                vec!["last", "neg"]
            ]
        );
        assert_eq!(
            rows.iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![1, 2, 4]
        );
    }

    #[test]
    fn csv_empty_fields_and_blank_lines() {
        let rows = parse_csv("a,,\n\n,\"\",x\n").unwrap();
        assert_eq!(fields(&rows), vec![vec!["a", "", ""], vec!["", "", "x"]]);
        assert_eq!(rows[1].line, 3);
    }

    #[test]
    fn csv_errors_name_the_line() {
        let (line, msg) = parse_csv("a,b\n\"open,x\ny,z\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(msg.contains("never closed"), "{msg}");
        let (line, msg) = parse_csv("a,b\nc,\"d\"e\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(msg.contains("after a closing quote"), "{msg}");
        assert!(!msg.contains("opened"), "{msg}");
        // A field left open on line 2 swallows the next line's quote.
        let (line, msg) = parse_csv("a,b\n\"open,x\n\"y\" z,w\n").unwrap_err();
        assert_eq!(line, 3);
        assert!(msg.contains("(the quoted field opened on line 2)"), "{msg}");
    }

    #[test]
    fn csv_literal_quote_inside_unquoted_field() {
        let rows = parse_csv("5\" tall,x\n").unwrap();
        assert_eq!(fields(&rows), vec![vec!["5\" tall", "x"]]);
    }
}

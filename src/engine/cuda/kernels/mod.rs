//! The CUDA C of the engine: `kernels.cu` includes one part per family of
//! kernels (common, dropout, layernorm, activations, loss, attention,
//! attention_mma, optim, glue, tf32x3). g++ builds them from files (the emulator,
//! tools/cuda_emu); NVRTC gets one string, [`source`], with each part pasted
//! where it is included, after a `#line` directive, so that a compile error
//! names the part and its own line.

use std::sync::OnceLock;

mod entry;
pub use entry::{operands_per_thread, Kernel, MmaFormat, ROW_BLOCK};

/// The translation unit, then every part, by file name in this folder.
pub const FILES: &[(&str, &str)] = &[
    ("kernels.cu", include_str!("kernels.cu")),
    ("common.cuh", include_str!("common.cuh")),
    ("dropout.cuh", include_str!("dropout.cuh")),
    ("layernorm.cuh", include_str!("layernorm.cuh")),
    ("activations.cuh", include_str!("activations.cuh")),
    ("loss.cuh", include_str!("loss.cuh")),
    ("attention.cuh", include_str!("attention.cuh")),
    ("attention_mma.cuh", include_str!("attention_mma.cuh")),
    ("optim.cuh", include_str!("optim.cuh")),
    ("glue.cuh", include_str!("glue.cuh")),
    ("tf32x3.cuh", include_str!("tf32x3.cuh")),
];

/// kernels.cu with its parts pasted in: what NVRTC compiles.
pub fn source() -> &'static str {
    static SOURCE: OnceLock<String> = OnceLock::new();
    SOURCE.get_or_init(|| expand(FILES))
}

/// `files[0]` with each `#include "part"` line replaced by that part of
/// `files`. Panics on a part that is not in `files`: the list above and
/// kernels.cu disagree (a test checks they do not).
fn expand(files: &[(&str, &str)]) -> String {
    let (main, text) = files[0];
    let mut out = String::new();
    for (n, line) in text.lines().enumerate() {
        let included = line
            .strip_prefix("#include \"")
            .and_then(|rest| rest.split('"').next());
        match included {
            Some(name) => {
                let part = files
                    .iter()
                    .find(|(f, _)| *f == name)
                    .unwrap_or_else(|| panic!("{main} includes {name}, which FILES lacks"))
                    .1;
                out.push_str(&format!("#line 1 \"{name}\"\n{part}"));
                if !part.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str(&format!("#line {} \"{main}\"\n", n + 2));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kernels.cu includes every part of FILES once, and nothing else; the
    /// source holds every line of every part.
    #[test]
    fn every_part_is_included_once() {
        let includes: Vec<&str> = FILES[0]
            .1
            .lines()
            .filter_map(|l| l.strip_prefix("#include \""))
            .map(|rest| rest.split('"').next().unwrap())
            .collect();
        let parts: Vec<&str> = FILES[1..].iter().map(|(f, _)| *f).collect();
        assert_eq!(includes, parts);
        let source = source();
        assert!(!source.contains("#include"));
        for (name, text) in FILES[1..].iter() {
            assert!(source.contains(text), "{name} is not in the source");
            assert_eq!(source.matches(&format!("#line 1 \"{name}\"")).count(), 1);
        }
    }

    /// After a part, the line numbers continue those of the including file.
    #[test]
    fn line_directives_resume_the_including_file() {
        let files = [("main.cu", "a\n#include \"p.cuh\"\nb\n"), ("p.cuh", "x\ny")];
        assert_eq!(
            expand(&files),
            "a\n#line 1 \"p.cuh\"\nx\ny\n#line 3 \"main.cu\"\nb\n"
        );
    }
}

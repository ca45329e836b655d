//! The CUDA engine. CI has no GPU: the tests that need one say so and return;
//! the kernel compile check runs wherever NVRTC can be loaded (it needs no
//! GPU), e.g. with a CUDA 13 toolkit's or PyTorch's lib folder on
//! LD_LIBRARY_PATH.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{max_abs_diff, rel_err, Case};
use ptuning::engine::cuda::device::{GemmOut, Operand};
use ptuning::engine::cuda::emulator::SANITIZE_ENV;
use ptuning::engine::cuda::encoder::{Prompt, PromptSource};
use ptuning::engine::cuda::kernels::{Kernel, MmaFormat};
use ptuning::engine::cuda::memory::DevBuf;
use ptuning::engine::cuda::nvrtc::cached_kernels;
use ptuning::engine::cuda::tf32x3::{self, Fp32Gemm, SplitWeight};
use ptuning::engine::cuda::{
    compile_kernels, missing_libraries, nvrtc_present, CudaDevice, CudaEncoder, KernelTime,
    Precision,
};
use ptuning::engine::device::{Compute, Device};
use ptuning::model::batch::Batch;
use ptuning::model::bert::BertModel;
use ptuning::model::encoder::{Activations, DropoutConfig};
use ptuning::model::heads::{ClassificationHead, HeadKind};
use ptuning::model::prefix::{BatchPrompt, PrefixConfig, PrefixEncoder, PromptMethod};
use ptuning::model::prompt_model::{PromptModel, Targets};
use ptuning::model::weights::{save_tensors, WeightFile};
use ptuning::rng::Rng;
use ptuning::training::adamw::{AdamW, AdamWConfig};

/// scripts/test.sh runs it again with NVRTC 13.0 (scripts/fetch-nvrtc.sh)
/// and PTUNING_REQUIRE_NVRTC=1, so that CI, which has no GPU, compiles the
/// kernels as the oldest CUDA 13 does.
#[test]
fn kernels_compile_with_nvrtc() {
    if !nvrtc_present() {
        assert!(
            std::env::var_os("PTUNING_REQUIRE_NVRTC").is_none(),
            "PTUNING_REQUIRE_NVRTC is set, but libnvrtc.so.13 cannot be loaded (LD_LIBRARY_PATH: {:?})",
            std::env::var_os("LD_LIBRARY_PATH")
        );
        eprintln!("skipped: libnvrtc.so.13 cannot be loaded here (no CUDA toolkit)");
        return;
    }
    // Head sizes 24 (tf32 on the tensor cores, not bf16) and 12 (neither)
    // leave kernels out, which the loader then does not look for.
    for (hd, arch) in [
        (32, "sm_75"),
        (32, "sm_80"),
        (64, "sm_90"),
        (128, "sm_90"),
        (24, "sm_90"),
        (12, "sm_90"),
    ] {
        let ptx = compile_kernels(hd, Some(arch.into()))
            .unwrap_or_else(|e| panic!("HEAD_DIM {hd}, {arch}: {e}"))
            .to_src();
        // mma.sync needs sm_80: before it the module must still load (the
        // tensor-core kernels are then never enabled).
        assert_eq!(
            ptx.contains("mma.sync"),
            arch != "sm_75" && hd % 8 == 0,
            "HEAD_DIM {hd}, {arch}"
        );
        for k in Kernel::ALL {
            assert_eq!(
                ptx.contains(&format!(".entry {}(", k.name())),
                k.built_for(hd),
                "HEAD_DIM {hd}: kernel {} in the PTX",
                k.name()
            );
        }
    }
    assert!(
        Kernel::AttentionForwardTf32.built_for(24) && !Kernel::AttentionForwardBf16.built_for(24)
    );
    // Through the kernel cache: compiled and stored once, then read back
    // as it was stored (two compiles need not give the same text).
    let dir = tempfile::tempdir().unwrap();
    let (first, cached) = cached_kernels(64, "sm_90", Some(dir.path())).unwrap();
    assert!(!cached && first.contains(".entry attention_forward_bf16("));
    assert_eq!(
        cached_kernels(64, "sm_90", Some(dir.path())).unwrap(),
        (first, true)
    );
    let (other, cached) = cached_kernels(32, "sm_90", Some(dir.path())).unwrap();
    assert!(!cached && other.contains(".entry attention_forward("));
}

#[test]
fn a_missing_cuda_is_a_clear_error() {
    let missing = missing_libraries();
    if missing.is_empty() {
        eprintln!("skipped: CUDA's libraries load here");
        return;
    }
    let e = CudaDevice::open(0, 64)
        .err()
        .expect("no CUDA, no device")
        .to_string();
    assert!(e.starts_with("CUDA: not usable here: cannot load"), "{e}");
    assert!(e.contains("--device cpu"), "{e}");
}

/// Where the engine tests run: the GPU when one is usable, and the CPU
/// emulation of the kernels (tools/cuda_emu) wherever g++ is, so that CI,
/// which has no GPU, runs every launch, pointer and GEMM of the CUDA engine.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Gpu,
    Emulated,
}

fn targets(test: &str) -> Vec<Target> {
    let mut out = Vec::new();
    let missing = missing_libraries();
    if missing.is_empty() {
        out.push(Target::Gpu);
    } else {
        eprintln!(
            "{test}: no GPU here (cannot load {}), so no GPU run",
            missing.join(", ")
        );
    }
    match common::emulator_cxx() {
        Ok(_) => out.push(Target::Emulated),
        Err(why) => eprintln!("{test}: {why}, so no emulated run"),
    }
    out
}

/// The C++ compiler the emulated device is built with, or None, said on
/// stderr, where there is none (the test is then skipped).
fn emulator_compiler() -> Option<String> {
    common::emulator_cxx()
        .map_err(|why| eprintln!("skipped: {why}, so no emulated device"))
        .ok()
}

/// The ptuning binary: PTUNING_TEST_BIN when the test runs away from its
/// build (bench/gpu.sh), else cargo's.
fn ptuning_bin() -> std::ffi::OsString {
    std::env::var_os("PTUNING_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_ptuning").into())
}

/// How many launches of kernel (or GEMM) `name` a profile counted.
fn launches(times: &[KernelTime], name: &str) -> usize {
    times
        .iter()
        .find(|t| t.name == name)
        .map_or(0, |t| t.launches)
}

/// A device of `target` with the kernels built for `head_dim`: GPU 0, or
/// the emulation.
fn open(target: Target, head_dim: usize) -> CudaDevice {
    match target {
        Target::Gpu => CudaDevice::open(0, head_dim),
        Target::Emulated => CudaDevice::emulated(head_dim),
    }
    .unwrap()
}

/// Puts `model`'s encoder on `target`.
fn attach(model: &mut PromptModel, target: Target, precision: Precision) {
    attach_with(model, target, precision, None)
}

/// [`attach`], with fp32's GEMMs run as `fp32` says (None: as the device
/// chooses, 3xTF32 on the emulated device and on cards with tensor cores).
fn attach_with(
    model: &mut PromptModel,
    target: Target,
    precision: Precision,
    fp32: Option<Fp32Gemm>,
) {
    let head_dim = model.backbone.config.head_dim();
    let mut dev = match (target, fp32) {
        (Target::Gpu, None) => {
            return model
                .use_compute(Compute {
                    device: Device::Cuda(0),
                    precision,
                })
                .unwrap()
        }
        _ => open(target, head_dim),
    };
    if let Some(mode) = fp32 {
        dev.fp32_gemm = mode;
    }
    let enc = CudaEncoder::on(dev, &model.backbone, precision).unwrap();
    model.gpu = Some(Arc::new(Mutex::new(enc)));
}

const CASES: &[&str] = &[
    "tiny_bert_plain",
    "tiny_bert_mlp_subset",
    "tiny_roberta_plain_subset",
    "tiny_roberta_mlp",
    "minilm_plain",
    "minilm_mlp_subset",
    "prompt_tuning_tiny_bert",
    "prompt_tuning_tiny_roberta",
    "prompt_tuning_tiny_bert_tokens",
    "prompt_tuning_minilm",
];

/// Per precision: (max |Δ| of hidden states and logits for fp32, else the
/// relative error ‖Δ‖/‖ref‖; relative error of the gradients). tf32 keeps
/// 10 mantissa bits (unit roundoff 4.9e-4) in every GEMM and, on the tensor
/// cores, in attention: 1.8e-3 on the tiny BERT's logits on the emulated
/// device, 1.5e-3 on an H100 with f32 attention; a bug is far above 5e-3.
/// PyTorch's own tf32 and bf16 lose up to 2.0e-3 and 3.1e-2 of these
/// cases' logits (tools/torch_precision_error.py).
fn tolerances(p: Precision) -> (f64, f64) {
    match p {
        Precision::Fp32 => (1e-4, 1e-3),
        Precision::Tf32 => (5e-3, 1e-2),
        Precision::Bf16 => (2e-2, 5e-2),
    }
}

/// The error of outputs (hidden states, logits) that [`tolerances`] bounds:
/// the largest absolute difference in fp32, the relative error otherwise.
fn output_error(precision: Precision, got: &[f32], want: &[f32]) -> f64 {
    if precision == Precision::Fp32 {
        max_abs_diff(got, want) as f64
    } else {
        rel_err(got, want)
    }
}

#[test]
fn cuda_engine_matches_the_reference_fixtures() {
    for target in targets("cuda_engine_matches_the_reference_fixtures") {
        for name in CASES {
            if name.contains("minilm") && !common::minilm_available() {
                eprintln!(
                    "{target:?}: skipped {name} (MiniLM needs its cache: scripts/fetch-model.sh)"
                );
                continue;
            }
            let case = Case::load(name);
            let batch = case.batch();
            // Every case in every precision, on the GPU and on the emulated
            // device alike (MiniLM's heads of 32 take the bf16, tf32 and
            // tf32x3 tensor-core kernels there too). fp32 runs as the device
            // chooses (3xTF32 but on cards without tensor cores), and as
            // SGEMM.
            let runs = [
                (Precision::Fp32, None),
                (Precision::Fp32, Some(Fp32Gemm::Sgemm)),
                (Precision::Tf32, None),
                (Precision::Bf16, None),
            ];
            for (precision, fp32_gemm) in runs {
                let mut model = case.model();
                let layers = model.backbone.layers.len();
                attach_with(&mut model, target, precision, fp32_gemm);
                let gpu = Arc::clone(model.gpu.as_ref().unwrap());
                let math = gpu.lock().unwrap().gemm_math();
                let (tol_out, tol_grad) = tolerances(precision);
                let check = |what: &str, got: &[f32], want: &[f32]| {
                    let err = output_error(precision, got, want);
                    eprintln!("{target:?} {name} {math}: {what} error {err:e}");
                    assert!(err <= tol_out, "{name} {math}: {what} error {err}");
                };
                // Every row of the last hidden state.
                let past = model.prefix.table();
                let hidden = gpu
                    .lock()
                    .unwrap()
                    .forward(
                        &batch,
                        Some(Prompt {
                            method: model.prefix.config.method,
                            len: model.prefix.config.len,
                            layers: &model.prefix.config.layers,
                            source: PromptSource::Shared(&past),
                        }),
                    )
                    .unwrap();
                check(
                    "last hidden state",
                    &hidden,
                    &case.f32(&format!("hidden_states.{layers}")),
                );
                let logits = model.predict(&batch).unwrap();
                check("logits", &logits, &case.f32("logits"));

                let out = case.step(&mut model);
                let loss = case.f32("loss")[0];
                assert!(
                    ((out.loss - loss).abs() as f64)
                        <= tol_out.max(1e-5) * loss.abs().max(1.0) as f64,
                    "{name}: loss {} vs {loss}",
                    out.loss
                );
                for p in model.params_mut() {
                    let e = rel_err(&p.grad, &case.f32(&format!("grad.{}", p.name)));
                    eprintln!("{name} {math}: grad of {} error {e:e}", p.name);
                    assert!(
                        e <= tol_grad,
                        "{name} {math}: grad of {} relative error {e}",
                        p.name
                    );
                }
            }
        }
    }
}

/// A training step with every dropout on gives the CPU's loss and gradients,
/// for every head and loss (run on the device) and a backbone without a
/// pooler: the masks are the same functions of (seed, stream, index) on
/// both devices.
#[test]
fn cuda_engine_dropout_and_heads_match_the_cpu() {
    for target in targets("cuda_engine_dropout_and_heads_match_the_cpu") {
        // MiniLM on a GPU where it is cached, else the tiny BERT (same code
        // paths); then prompt tuning (its backward through the embeddings'
        // dropout, its heads reading past the prompt's rows).
        let deep = if target == Target::Gpu && common::minilm_available() {
            "minilm_plain"
        } else {
            "tiny_bert_plain"
        };
        for name in [deep, "prompt_tuning_tiny_bert"] {
            dropout_and_heads_match(target, &Case::load(name));
        }
    }
}

fn dropout_and_heads_match(target: Target, case: &Case) {
    {
        let batch = case.batch();
        let labels = case.labels();
        let dropout = DropoutConfig {
            hidden: 0.1,
            attention: 0.1,
            seed: 42,
        };
        let tags: Vec<i64> = (0..batch.rows())
            .map(|i| if i % 7 == 0 { -100 } else { (i % 3) as i64 })
            .collect();
        let starts: Vec<usize> = (0..batch.batch).map(|b| b % batch.seq).collect();
        let ends: Vec<usize> = (0..batch.batch).map(|b| (b + 2) % batch.seq).collect();
        let scores: Vec<f32> = (0..batch.batch).map(|b| b as f32 * 0.5 - 1.0).collect();
        // (head, outputs, whether the backbone keeps its pooler): the head
        // runs on the device, with dropout on its input.
        for (kind, outputs, pooler) in [
            (HeadKind::Classification, case.usize("num_labels"), true),
            (HeadKind::Classification, case.usize("num_labels"), false),
            (HeadKind::Regression, 1, true),
            (HeadKind::MultipleChoice, 1, true),
            (HeadKind::TokenClassification, 3, true),
            (HeadKind::QuestionAnswering, 2, true),
        ] {
            let targets = match kind {
                HeadKind::Classification => Targets::Classes(&labels),
                HeadKind::Regression => Targets::Scores(&scores),
                // The batch's rows are the choices of one example.
                HeadKind::MultipleChoice => Targets::Choices {
                    choices: batch.batch,
                    labels: &[2],
                },
                HeadKind::TokenClassification => Targets::Tokens(&tags),
                _ => Targets::Spans {
                    start: &starts,
                    end: &ends,
                },
            };
            let mut cpu = case.model();
            if !pooler {
                let mut backbone = (*cpu.backbone).clone();
                backbone.pooler = None;
                cpu.backbone = Arc::new(backbone);
            }
            cpu.head =
                ClassificationHead::for_kind(kind, cpu.backbone.config.hidden_size, outputs, 5);
            let mut gpu = case.model();
            gpu.backbone = Arc::clone(&cpu.backbone);
            gpu.head = cpu.head.clone();
            attach(&mut gpu, target, Precision::Fp32);
            let mut acts = Activations::default();
            cpu.zero_grad();
            gpu.zero_grad();
            let a = cpu
                .forward_backward(&batch, targets, &dropout, &mut acts)
                .unwrap();
            let b = gpu
                .forward_backward(&batch, targets, &dropout, &mut Activations::default())
                .unwrap();
            gpu.grads_to_host().unwrap();
            assert!(
                (a.loss - b.loss).abs() <= 1e-4 * a.loss.abs().max(1.0),
                "{kind:?}: loss {} vs {}",
                b.loss,
                a.loss
            );
            // Inference: the head on the device, no dropout.
            let e = rel_err(&gpu.predict(&batch).unwrap(), &cpu.predict(&batch).unwrap());
            assert!(
                e <= 1e-4,
                "{kind:?} (pooler {pooler}): logits relative error {e}"
            );
            for (p, q) in cpu.params_mut().into_iter().zip(gpu.params_mut()) {
                // The QA bias gradient sums a softmax minus a one-hot over
                // the tokens: zero up to rounding, so compared absolutely.
                let norm = p.grad.iter().map(|g| g * g).sum::<f32>().sqrt();
                let e = if norm < 1e-4 {
                    max_abs_diff(&q.grad, &p.grad) as f64 * 10.0
                } else {
                    rel_err(&q.grad, &p.grad)
                };
                eprintln!(
                    "{target:?} {kind:?} with dropout: grad of {} error {e:e}",
                    p.name
                );
                assert!(e <= 1e-3, "{kind:?}: grad of {} relative error {e}", p.name);
            }
        }
    }
}

/// A hidden size over what the LayerNorm kernels hold in registers (32 a
/// thread, a block of 256 threads to a row: 8192) is refused when the
/// encoder opens, with the limit and the way out.
#[test]
fn a_hidden_size_too_wide_for_layernorm_is_refused() {
    if !targets("a_hidden_size_too_wide_for_layernorm_is_refused").contains(&Target::Emulated) {
        return;
    }
    let mut model = (*Case::load("tiny_bert_plain").model().backbone).clone();
    let heads = 8320 / model.config.head_dim();
    model.config.hidden_size = 8320;
    model.config.num_attention_heads = heads;
    let dev = CudaDevice::emulated(model.config.head_dim()).unwrap();
    let e = CudaEncoder::on(dev, &model, Precision::Fp32)
        .err()
        .expect("a row of 8320 values does not fit")
        .to_string();
    assert!(e.contains("at most 8192") && e.contains("8320"), "{e}");
    assert!(e.contains("--device cpu"), "{e}");
}

/// Inference sends the prefix table only when it changed since the last
/// call: a table changed on the host (a training step, a loaded
/// checkpoint) reaches the device, and the same table gives the same logits.
#[test]
fn a_changed_prefix_table_reaches_the_device() {
    for target in targets("a_changed_prefix_table_reaches_the_device") {
        let case = Case::load("tiny_bert_plain");
        let batch = case.batch();
        let mut cpu = case.model();
        let mut gpu = case.model();
        attach(&mut gpu, target, Precision::Fp32);
        let first = gpu.predict(&batch).unwrap();
        assert_eq!(gpu.predict(&batch).unwrap(), first);
        for model in [&mut cpu, &mut gpu] {
            for (i, x) in model.prefix.embedding.value.iter_mut().enumerate() {
                *x += 0.5 * ((i % 7) as f32 - 3.0);
            }
        }
        let changed = gpu.predict(&batch).unwrap();
        assert!(
            max_abs_diff(&changed, &first) > 1e-3,
            "the new table was not used"
        );
        let want = cpu.predict(&batch).unwrap();
        assert!(
            max_abs_diff(&changed, &want) <= 1e-4,
            "{changed:?} vs {want:?}"
        );
    }
}

/// Rows with their own prefix tables (how the server batches adapters): the
/// device expands each row's table, which gives the shared table's output
/// where every row names it, and the CPU engine's on each row's own prompt
/// where the rows name different tables.
#[test]
fn cuda_engine_per_row_prompts_match_the_shared_table() {
    for target in targets("cuda_engine_per_row_prompts_match_the_shared_table") {
        let case = Case::load("tiny_bert_mlp_subset");
        let mut model = case.model();
        let batch = case.batch();
        let past = model.prefix.table();
        // A second adapter's table.
        let other: Arc<[f32]> = past
            .iter()
            .enumerate()
            .map(|(i, v)| v * 0.5 + (i % 7) as f32 * 0.01)
            .collect();
        attach(&mut model, target, Precision::Fp32);
        let gpu = Arc::clone(model.gpu.as_ref().unwrap());
        let mut enc = gpu.lock().unwrap();
        let layers = &model.prefix.config.layers;
        let len = model.prefix.config.len;
        let run = |enc: &mut CudaEncoder, source| {
            enc.forward(
                &batch,
                Some(Prompt {
                    method: PromptMethod::PTuningV2,
                    len,
                    layers,
                    source,
                }),
            )
            .unwrap()
        };
        let shared = run(&mut enc, PromptSource::Shared(&past));
        let all_first = vec![0u32; batch.batch];
        let tables = [Arc::clone(&past), Arc::clone(&other)];
        let per_row = run(
            &mut enc,
            PromptSource::PerRow {
                tables: &tables,
                row_table: &all_first,
            },
        );
        assert_eq!(shared, per_row);
        // Rows alternate between the tables: on the CPU, each row's own
        // keys and values, gathered from its table.
        let row_table: Vec<u32> = (0..batch.batch as u32).map(|b| b % 2).collect();
        let mixed = run(
            &mut enc,
            PromptSource::PerRow {
                tables: &tables,
                row_table: &row_table,
            },
        );
        // Each row's keys and values from its own table's expansion.
        let expanded = tables
            .each_ref()
            .map(|t| model.prefix.expand(t, batch.batch, None));
        let row_len = len * 2 * model.backbone.config.hidden_size;
        let kv = (0..layers.len())
            .map(|k| {
                row_table
                    .iter()
                    .enumerate()
                    .flat_map(|(b, &t)| &expanded[t as usize].kv[k][b * row_len..][..row_len])
                    .copied()
                    .collect()
            })
            .collect();
        let prompt = BatchPrompt {
            method: PromptMethod::PTuningV2,
            len,
            layers: layers.clone(),
            kv,
        };
        let cpu = model.backbone.forward(&batch, Some(&prompt)).unwrap();
        assert!(max_abs_diff(&mixed, &cpu) <= 1e-4);
        assert!(
            max_abs_diff(&mixed, &shared) > 1e-3,
            "the second table changes the rows that name it"
        );
        // The device keeps the tables it was sent, known by their Arc: the
        // same tables again are not sent again (nothing more is held, the
        // same output), and a new table, here other values in place of the
        // second, is sent and read.
        let held = enc.dev.memory().now;
        let again = run(
            &mut enc,
            PromptSource::PerRow {
                tables: &tables,
                row_table: &row_table,
            },
        );
        assert_eq!(again, mixed);
        assert_eq!(enc.dev.memory().now, held, "a table was sent again");
        let third: Arc<[f32]> = other.iter().map(|v| v * -1.0).collect();
        let changed = run(
            &mut enc,
            PromptSource::PerRow {
                tables: &[Arc::clone(&past), Arc::clone(&third)],
                row_table: &row_table,
            },
        );
        assert!(enc.dev.memory().now > held, "the new table was not sent");
        assert!(
            max_abs_diff(&changed, &mixed) > 1e-3,
            "the new table was not read"
        );
        // A row naming a table that is not there is an error, not a read
        // past the tables.
        let bad = vec![2u32; batch.batch];
        let e = enc
            .forward(
                &batch,
                Some(Prompt {
                    method: PromptMethod::PTuningV2,
                    len,
                    layers,
                    source: PromptSource::PerRow {
                        tables: &tables,
                        row_table: &bad,
                    },
                }),
            )
            .expect_err("table 2 of 2")
            .to_string();
        assert!(e.contains("name tables"), "{e}");
    }
}

/// `--device` from the command line: auto falls back to the CPU (without
/// the CUDA libraries, or with them but no GPU it can open), cuda says why
/// it cannot run, a typo is named; `bench --profile` needs a GPU and
/// reports its kernels there. PTUNING_TEST_BIN names the binary when the
/// test runs away from its build (bench/gpu.sh).
#[test]
fn device_flag_from_the_command_line() {
    let tiny = common::fixtures().join("tiny-bert");
    let bin = ptuning_bin();
    let bench_env = |device: &str, extra: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(&bin)
            .envs(env.iter().copied())
            .args(["--device", device, "bench", "--model"])
            .arg(&tiny)
            .args([
                "--batch", "2", "--seq", "8", "--warmup", "0", "--iters", "1", "--json",
            ])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let bench = |device: &str, extra: &[&str]| bench_env(device, extra, &[]);
    let (ok, _, err) = bench("gpu", &[]);
    assert!(!ok && err.contains("unknown device \"gpu\""), "{err}");
    if !missing_libraries().is_empty() {
        let (ok, out, err) = bench("auto", &[]);
        assert!(ok, "{err}");
        assert!(out.contains("\"device\":\"cpu\""), "{out}");
        let (ok, _, err) = bench("cuda", &[]);
        assert!(!ok && err.contains("CUDA: not usable here"), "{err}");
        let (ok, _, err) = bench("auto", &["--profile"]);
        assert!(!ok && err.contains("--profile times GPU kernels"), "{err}");
        // The CPU engine is f32: another precision is noted, not obeyed.
        let (ok, _, err) = bench("auto", &["--precision", "bf16"]);
        assert!(ok, "{err}");
        assert!(
            err.contains("--precision bf16 applies on a GPU; the CPU engine computes in fp32"),
            "{err}"
        );
        let (ok, _, err) = bench("cpu", &[]);
        assert!(ok && !err.contains("--precision"), "{err}");
    } else {
        // fp32's attention follows its GEMMs: 3xTF32 on the tensor cores
        // (compute capability 8.0 on), SGEMM on the f32 kernels.
        let (ok, out, err) = bench("cuda", &["--profile"]);
        assert!(ok, "{err}");
        assert!(!out.contains("\"device\":\"cpu\""), "{out}");
        let tf32x3 = out.contains("\"gemm\":\"3xTF32\"");
        let (kernel, attention) = if tf32x3 {
            ("attention_forward_tf32x3", "tensor cores (tf32x3)")
        } else {
            ("attention_forward", "f32")
        };
        assert!(out.contains(&format!("\"{kernel}\"")), "{out}");
        assert!(
            out.contains(&format!("\"attention\":\"{attention}\"")),
            "{out}"
        );
        assert!(err.contains("ms of kernels per step"), "{err}");
        let (ok, out, err) = bench_env("cuda", &["--profile"], &[("PTUNING_FP32_GEMM", "sgemm")]);
        assert!(ok, "{err}");
        assert!(out.contains("\"gemm\":\"SGEMM\""), "{out}");
        assert!(out.contains("\"attention_forward\""), "{out}");
        assert!(out.contains("\"attention\":\"f32\""), "{out}");
        // The libraries load but no GPU opens (none visible, or not that
        // one): auto says why and runs on the CPU; cuda fails with the reason.
        let hidden = [("CUDA_VISIBLE_DEVICES", "")];
        let (ok, out, err) = bench_env("auto", &[], &hidden);
        assert!(ok, "{err}");
        assert!(out.contains("\"device\":\"cpu\""), "{out}");
        assert!(
            err.contains("--device auto: GPU 0 cannot run this model (CUDA: "),
            "{err}"
        );
        let (ok, _, err) = bench_env("cuda", &[], &hidden);
        assert!(!ok && err.contains("CUDA: "), "{err}");
        let (ok, _, err) = bench("cuda:64", &[]);
        assert!(!ok && err.contains("no GPU cuda:64"), "{err}");
    }
}

/// The profile of a forward counts every launch: one embedding kernel, one
/// attention per layer, four GEMMs per layer named by shape, and times them.
#[test]
fn profile_counts_every_launch() {
    for target in targets("profile_counts_every_launch") {
        let case = Case::load("tiny_bert_plain");
        let mut model = case.model();
        let batch = case.batch();
        let past = model.prefix.table();
        attach(&mut model, target, Precision::Fp32);
        let gpu = Arc::clone(model.gpu.as_ref().unwrap());
        let mut enc = gpu.lock().unwrap();
        let layers_n = model.backbone.config.num_hidden_layers;
        let (h, inter) = (
            model.backbone.config.hidden_size,
            model.backbone.config.intermediate_size,
        );
        enc.dev.start_profile();
        let prompt = Prompt {
            method: PromptMethod::PTuningV2,
            len: model.prefix.config.len,
            layers: &model.prefix.config.layers,
            source: PromptSource::Shared(&past),
        };
        enc.forward(&batch, Some(prompt)).unwrap();
        let times = enc.dev.take_profile().unwrap();
        assert_eq!(launches(&times, "embed_layernorm"), 1, "{times:?}");
        // fp32 by 3xTF32: three tf32 GEMMs per product, after a split of
        // each of the layer's four GEMM inputs, and attention on the tensor
        // cores in the same way (8-wide heads); by SGEMM, the f32 kernels.
        let rows = batch.rows();
        let (math, per, splits, attention) = match enc.dev.fp32_gemm {
            Fp32Gemm::Sgemm => ("fp32", 1, 0, "attention_forward"),
            Fp32Gemm::Tf32x3 => ("tf32", 3, 4 * layers_n, "attention_forward_tf32x3"),
        };
        assert_eq!(launches(&times, attention), layers_n, "{times:?}");
        let gemm = format!("gemm {math} {}x{rows}x{h} TN", 3 * h);
        assert_eq!(
            launches(&times, &gemm),
            per * layers_n,
            "{gemm} in {times:?}"
        );
        let ffn = format!("gemm {math} {inter}x{rows}x{h} TN");
        assert_eq!(launches(&times, &ffn), per * layers_n, "{ffn} in {times:?}");
        assert_eq!(launches(&times, "split_tf32"), splits, "{times:?}");
        // Inference's residual LayerNorms: the kernel without the training
        // paths, two a layer.
        assert_eq!(
            launches(&times, "residual_layernorm"),
            2 * layers_n,
            "{times:?}"
        );
        assert_eq!(
            launches(&times, "bias_dropout_residual_layernorm"),
            0,
            "{times:?}"
        );
        assert!(times.iter().all(|t| t.ms >= 0.0) && times.iter().any(|t| t.ms > 0.0));
        // Profiling stopped: the next forward adds nothing.
        enc.forward(&batch, None).unwrap();
        assert!(enc.dev.take_profile().unwrap().is_empty());
        drop(enc);

        // A training step runs the pooled head and its loss on the device:
        // the [CLS] rows out, the pooler's tanh, the cross-entropy, tanh's
        // backward, the rows back.
        gpu.lock().unwrap().dev.start_profile();
        case.step(&mut model);
        let times = gpu.lock().unwrap().dev.take_profile().unwrap();
        for name in [
            "gather_rows",
            "bias_tanh",
            "cross_entropy",
            "tanh_backward",
            "scatter_rows",
        ] {
            assert_eq!(launches(&times, name), 1, "{name} in {times:?}");
        }
        // Training saves the LayerNorms' inputs: the kernel with them.
        assert_eq!(
            launches(&times, "bias_dropout_residual_layernorm"),
            2 * layers_n,
            "{times:?}"
        );
        let classes = model.head.num_labels();
        let d_weight = format!("gemm fp32 {h}x{classes}x{} NT", batch.batch);
        assert_eq!(launches(&times, &d_weight), 1, "{d_weight} in {times:?}");

        // bf16: bias + GELU 8 at a time, from and into bf16 (rows of 64);
        // the residual stream in bf16 alone but the last layer's output.
        let mut bf16 = case.model();
        attach(&mut bf16, target, Precision::Bf16);
        let mut enc = bf16.gpu.as_ref().unwrap().lock().unwrap();
        enc.dev.start_profile();
        let prompt = Prompt {
            method: PromptMethod::PTuningV2,
            len: bf16.prefix.config.len,
            layers: &bf16.prefix.config.layers,
            source: PromptSource::Shared(&past),
        };
        enc.forward(&batch, Some(prompt)).unwrap();
        let times = enc.dev.take_profile().unwrap();
        assert_eq!(launches(&times, "bias_gelu_bf16"), layers_n, "{times:?}");
        assert_eq!(launches(&times, "bias_gelu"), 0, "{times:?}");
        for (name, n) in [
            ("residual16_layernorm", 2 * layers_n - 1),
            ("residual16_layernorm_f32", 1),
            ("residual_layernorm", 0),
            ("bias_dropout_residual_layernorm", 0),
        ] {
            assert_eq!(launches(&times, name), n, "{name} in {times:?}");
        }
    }
}

/// The CUDA kernels' semantics, checked without a GPU: tools/cuda_emu runs
/// kernels.cu on the CPU (the threads of a block as fibers, one at a time
/// from barrier to barrier) against a double-precision attention, central
/// differences for every backward, and the CPU engine's dropout mask. It runs
/// twice, the blocks and their threads in opposite orders: a race (in shared
/// memory, or between blocks) changes some output, and so the digest of
/// them all. The first run is under
/// AddressSanitizer and UBSan.
#[test]
fn kernels_pass_the_cpu_emulation() {
    let Some(gxx) = emulator_compiler() else {
        return;
    };
    let root = common::repo_root();
    let dir = tempfile::tempdir().unwrap();
    let build = |head_dim: usize, sanitizers: &[&str]| {
        let exe = dir.path().join(format!(
            "check_kernels_{head_dim}{}",
            if sanitizers.is_empty() {
                ""
            } else {
                "_sanitized"
            }
        ));
        let out = std::process::Command::new(&gxx)
            .args(["-std=c++20", "-O1", "-Wno-unknown-pragmas"])
            .args(sanitizers)
            .arg(format!("-DHEAD_DIM={head_dim}"))
            .arg("-o")
            .arg(&exe)
            .arg(root.join("tools/cuda_emu/check_kernels.cpp"))
            .output()
            .unwrap();
        match out.status.success() {
            true => Ok(exe),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    };
    // The tiny models' head size, the smallest the bf16 tensor cores take
    // (one k step of m16n8k16 a product), MiniLM's (the default model), and
    // BERT-base's and -large's (two column groups per thread in the
    // attention tiles).
    for head_dim in [8, 16, 32, 64] {
        let plain =
            build(head_dim, &[]).unwrap_or_else(|e| panic!("building the emulator failed:\n{e}"));
        // In thread order under AddressSanitizer and UBSan: a read or write
        // past a buffer, a misaligned vector load or an index past a local
        // array stops the run (on a GPU it would read garbage or fault).
        let sanitizers = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"];
        let forward = build(head_dim, &sanitizers).unwrap_or_else(|e| {
            eprintln!("no sanitizers here ({e}), so the forward order runs without them");
            plain.clone()
        });
        let mut digests = Vec::new();
        for (order, exe) in [("forward", &forward), ("reverse", &plain)] {
            let run = std::process::Command::new(exe)
                .env("PTUNING_EMU_ORDER", order)
                .output()
                .unwrap();
            let out = String::from_utf8_lossy(&run.stdout);
            let err = String::from_utf8_lossy(&run.stderr);
            eprintln!("HEAD_DIM {head_dim}, threads in {order} order:\n{out}");
            assert!(run.status.success(), "kernel checks failed:\n{out}{err}");
            // Every check ran: head size 8 has the tf32 and tf32x3
            // tensor-core checks, 16, 32 and 64 the bf16 ones too (29 more).
            let passed = out.lines().filter(|l| l.ends_with(" ok")).count();
            let want = if head_dim % 16 == 0 { 143 } else { 114 };
            assert!(
                passed == want && out.contains("0 failed"),
                "{passed} of {want}:\n{out}"
            );
            let digest = out.lines().find_map(|l| l.strip_prefix("digest "));
            digests.push(digest.expect("a digest line").to_string());
        }
        assert_eq!(
            digests[0], digests[1],
            "HEAD_DIM {head_dim}: the outputs depend on the order of the threads (a race)"
        );
    }
}

/// A backbone of BERT-base's widths (hidden 768, 12 heads of 64,
/// intermediate 3072; 2 layers, random weights) on the device against the
/// CPU engine: inference logits and a training step's gradients within each
/// precision's error. The fixtures' models are narrower; bench/gpu.sh times
/// these widths, and this checks them, on the GPU and the emulated device.
#[test]
fn a_bert_base_wide_model_matches_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let backbone = Arc::new(random_backbone(dir.path(), (768, 12, 3072, 2)));
    let c = backbone.config.clone();
    assert_eq!(c.head_dim(), 64);
    let model = || {
        let config = PrefixConfig {
            method: PromptMethod::PTuningV2,
            len: 5,
            projection: false,
            hidden_size: 512,
            layers: (0..c.num_hidden_layers).collect(),
        };
        PromptModel {
            backbone: Arc::clone(&backbone),
            prefix: PrefixEncoder::new(config, c.hidden_size, c.num_hidden_layers, 1).unwrap(),
            head: ClassificationHead::new(c.hidden_size, 3, 2),
            gpu: None,
        }
    };
    // Two rows, the second padded; ids within the tiny vocabulary.
    let rows: Vec<(Vec<u32>, Vec<u32>)> = [13, 9]
        .iter()
        .map(|&n| {
            (
                (0..n).map(|i| 2 + (i * 7 % 100) as u32).collect(),
                vec![0; n],
            )
        })
        .collect();
    let batch = Batch::pad(&rows, 0).unwrap();
    let labels = [2usize, 0];
    let step = |m: &mut PromptModel| {
        m.zero_grad();
        m.forward_backward(
            &batch,
            Targets::Classes(&labels),
            &DropoutConfig::OFF,
            &mut Activations::default(),
        )
        .unwrap();
        m.grads_to_host().unwrap();
    };
    let mut cpu = model();
    let want = cpu.predict(&batch).unwrap();
    step(&mut cpu);
    for target in targets("a_bert_base_wide_model_matches_the_cpu") {
        for precision in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
            let (tol_out, tol_grad) = tolerances(precision);
            let mut gpu = model();
            attach(&mut gpu, target, precision);
            if target == Target::Emulated {
                // Heads of 64: attention on the tensor cores in every precision.
                let enc = gpu.gpu.as_ref().unwrap().lock().unwrap();
                assert!(enc.dev.attention_format(precision).is_some());
            }
            let got = gpu.predict(&batch).unwrap();
            let e = output_error(precision, &got, &want);
            eprintln!("{target:?} {precision:?}: logits error {e:e}");
            assert!(e <= tol_out, "{target:?} {precision:?}: logits error {e}");
            step(&mut gpu);
            for (p, q) in cpu.params_mut().into_iter().zip(gpu.params_mut()) {
                let e = rel_err(&q.grad, &p.grad);
                eprintln!("{target:?} {precision:?}: grad of {} error {e:e}", p.name);
                assert!(
                    e <= tol_grad,
                    "{target:?} {precision:?}: grad of {} error {e}",
                    p.name
                );
            }
        }
    }
}

/// A BERT folder in `dir` of (hidden, heads, intermediate, layers), with
/// the tiny BERT's vocabulary and positions, and weights drawn as BERT
/// initializes them (normal, std 0.02; LayerNorms near 1 and 0), loaded.
fn random_backbone(
    dir: &Path,
    (h, heads, inter, layers): (usize, usize, usize, usize),
) -> BertModel {
    let src = common::fixtures().join("tiny-bert");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["hidden_size"] = h.into();
    config["num_attention_heads"] = heads.into();
    config["intermediate_size"] = inter.into();
    config["num_hidden_layers"] = layers.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let (vocab, positions) = (
        config["vocab_size"].as_u64().unwrap() as usize,
        config["max_position_embeddings"].as_u64().unwrap() as usize,
    );
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.word_embeddings.weight".into(), vec![vocab, h]),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![positions, h],
        ),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, h]),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
        ("pooler.dense.weight".into(), vec![h, h]),
        ("pooler.dense.bias".into(), vec![h]),
    ];
    for l in 0..layers {
        let linear = |name: &str, out: usize, inp: usize| {
            let at = format!("encoder.layer.{l}.{name}");
            [
                (format!("{at}.weight"), vec![out, inp]),
                (format!("{at}.bias"), vec![out]),
            ]
        };
        for (name, out, inp) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", inter, h),
            ("output.dense", h, inter),
        ] {
            shapes.extend(linear(name, out, inp));
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            shapes.push((format!("encoder.layer.{l}.{norm}.weight"), vec![h]));
            shapes.push((format!("encoder.layer.{l}.{norm}.bias"), vec![h]));
        }
    }
    let mut rng = Rng::new(11);
    let values: Vec<Vec<f32>> = shapes
        .iter()
        .map(|(name, shape)| {
            let mut v = vec![0.0f32; shape.iter().product()];
            rng.fill_normal(&mut v, 0.02);
            if name.contains("LayerNorm.weight") {
                v.iter_mut().for_each(|x| *x += 1.0);
            }
            v
        })
        .collect();
    let tensors: Vec<(String, Vec<usize>, &[f32])> = shapes
        .iter()
        .zip(&values)
        .map(|((name, shape), v)| (name.clone(), shape.clone(), v.as_slice()))
        .collect();
    save_tensors(&dir.join("model.safetensors"), &tensors).unwrap();
    BertModel::load(dir).unwrap()
}

/// Every device buffer holds what the kernels touch: on a GPU a kernel
/// that reads or writes past its buffer faults or silently uses another
/// one. Some of the emulated engine tests run again in a child process with
/// the kernels built under AddressSanitizer (PTUNING_EMU_SANITIZE=1) and
/// libasan preloaded, so that every allocation, the device buffers'
/// included, has redzones; taking 3 elements off the attention_delta
/// buffer, for one, stops them with a heap-buffer-overflow.
#[test]
fn emulated_kernels_stay_inside_their_buffers() {
    let Some(gxx) = emulator_compiler() else {
        return;
    };
    let asan = std::process::Command::new(&gxx)
        .arg("-print-file-name=libasan.so")
        .output()
        .unwrap();
    let asan = String::from_utf8_lossy(&asan.stdout).trim().to_string();
    if !Path::new(&asan).is_absolute() {
        eprintln!("skipped: {gxx} has no libasan.so");
        return;
    }
    let tests = [
        "a_bert_base_wide_model_matches_the_cpu",
        "cuda_engine_dropout_and_heads_match_the_cpu",
        "cuda_engine_per_row_prompts_match_the_shared_table",
        "attention_on_the_tensor_cores",
        "device_optimizer_matches_the_host",
    ];
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "--test-threads", "1"])
        .args(tests)
        .env("LD_PRELOAD", &asan)
        .env("ASAN_OPTIONS", "detect_leaks=0")
        .env(SANITIZE_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(&format!("{} passed", tests.len())),
        "under AddressSanitizer:\n{stdout}\n{stderr}"
    );
}

/// Races that only a real model's shapes reach (MiniLM's rows of 384 over
/// the 8 warps of the row kernels, its heads of 32 on the tensor cores): on
/// the emulated device, an inference and a training step with dropout give
/// the same bits with the threads of every block in reverse order, in
/// every precision.
#[test]
fn emulated_models_give_the_same_bits_in_both_thread_orders() {
    if emulator_compiler().is_none() {
        return;
    }
    let name = if common::minilm_available() {
        "minilm_plain"
    } else {
        eprintln!("MiniLM is not cached: the tiny BERT instead");
        "tiny_bert_plain"
    };
    let case = Case::load(name);
    let dropout = DropoutConfig {
        hidden: 0.1,
        attention: 0.1,
        seed: 7,
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    for precision in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
        let mut runs = Vec::new();
        for reverse in [false, true] {
            let mut model = case.model();
            attach(&mut model, Target::Emulated, precision);
            let gpu = Arc::clone(model.gpu.as_ref().unwrap());
            gpu.lock()
                .unwrap()
                .dev
                .reverse_emulated_threads(reverse)
                .unwrap();
            let mut out = bits(&model.predict(&case.batch()).unwrap());
            let step = case.step_with(&mut model, &dropout);
            out.push(step.loss.to_bits());
            for p in model.params_mut() {
                out.extend(bits(&p.grad));
            }
            runs.push(out);
        }
        assert!(
            runs[0] == runs[1],
            "{name} {precision:?}: the threads' order changes the results (a race)"
        );
    }
}

/// In bf16, tf32 and fp32 by 3xTF32, attention runs on the tensor cores
/// when the head size is a multiple of the format's k (the tiny BERT with 2
/// heads of 16): inference logits and a training step's gradients stay
/// within the precision's error of the CPU engine's. 8-wide heads take the
/// tf32 and tf32x3 paths only; fp32 by SGEMM keeps the f32 kernels.
#[test]
fn attention_on_the_tensor_cores() {
    for target in targets("attention_on_the_tensor_cores") {
        let case = Case::load("tiny_bert_plain");
        let dir = tempfile::tempdir().unwrap();
        let src = common::fixtures().join("tiny-bert");
        std::fs::copy(
            src.join("model.safetensors"),
            dir.path().join("model.safetensors"),
        )
        .unwrap();
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap())
                .unwrap();
        config["num_attention_heads"] = 2.into();
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let backbone = Arc::new(BertModel::load(dir.path()).unwrap());
        assert_eq!(backbone.config.head_dim(), 16);
        let mut cpu = case.model();
        cpu.backbone = Arc::clone(&backbone);
        let want_logits = cpu.predict(&case.batch()).unwrap();
        case.step(&mut cpu);

        for (precision, format) in [
            (Precision::Bf16, MmaFormat::Bf16),
            (Precision::Tf32, MmaFormat::Tf32),
            (Precision::Fp32, MmaFormat::Tf32x3),
        ] {
            let suffix = format.as_str();
            let (tol_out, tol_grad) = tolerances(precision);
            let mut gpu = case.model();
            gpu.backbone = Arc::clone(&backbone);
            attach_with(&mut gpu, target, precision, Some(Fp32Gemm::Tf32x3));
            let batch = case.batch();
            let enc = Arc::clone(gpu.gpu.as_ref().unwrap());
            let ran = enc.lock().unwrap().dev.attention_format(precision);
            assert_eq!(ran, Some(format));
            let layers = cpu.backbone.config.num_hidden_layers;
            let forward = format!("attention_forward_{suffix}");

            enc.lock().unwrap().dev.start_profile();
            let got = gpu.predict(&batch).unwrap();
            let times = enc.lock().unwrap().dev.take_profile().unwrap();
            // Inference in bf16 reads q, k and v from the QKV GEMM's output;
            // attention_operands writes the prefix's rows alone.
            let inference = match format.forward_from_qkv() {
                Some(k) => k.name().to_string(),
                None => forward.clone(),
            };
            assert_eq!(launches(&times, &inference), layers, "{times:?}");
            assert_eq!(launches(&times, "attention_operands"), layers, "{times:?}");
            assert_eq!(launches(&times, "attention_forward"), 0, "{times:?}");
            let e = output_error(precision, &got, &want_logits);
            eprintln!("{target:?}: {suffix} tensor-core inference, logits error {e:e}");
            assert!(e <= tol_out, "{suffix}: logits relative error {e}");
            if format.forward_from_qkv().is_some() {
                // PTUNING_BF16_ATTENTION=operands: attention_operands' copy, as
                // before; within bf16's error of the CPU and of the other way.
                enc.lock().unwrap().dev.attention_from_qkv = false;
                enc.lock().unwrap().dev.start_profile();
                let via_operands = gpu.predict(&batch).unwrap();
                let times = enc.lock().unwrap().dev.take_profile().unwrap();
                enc.lock().unwrap().dev.attention_from_qkv = true;
                assert_eq!(launches(&times, &forward), layers, "{times:?}");
                assert_eq!(launches(&times, &inference), 0, "{times:?}");
                let e = output_error(precision, &via_operands, &want_logits);
                let between = output_error(precision, &got, &via_operands);
                eprintln!("{target:?}: {suffix} through attention_operands, logits error {e:e}, {between:e} from {inference}'s");
                assert!(e <= tol_out && between <= tol_out, "{e} {between}");
            }

            enc.lock().unwrap().dev.start_profile();
            case.step(&mut gpu);
            let times = enc.lock().unwrap().dev.take_profile().unwrap();
            assert_eq!(launches(&times, &forward), layers, "{times:?}");
            assert!(
                launches(&times, &format!("attention_backward_dkv_{suffix}")) > 0,
                "{times:?}"
            );
            for name in [
                "attention_forward",
                "attention_backward_dq",
                "attention_backward_dkv",
            ] {
                assert_eq!(launches(&times, name), 0, "{name} in {times:?}");
            }
            for (p, q) in cpu.params_mut().into_iter().zip(gpu.params_mut()) {
                let e = rel_err(&q.grad, &p.grad);
                eprintln!(
                    "{target:?}: {suffix} tensor-core training, grad of {} error {e:e}",
                    p.name
                );
                assert!(
                    e <= tol_grad,
                    "{suffix}: grad of {} relative error {e}",
                    p.name
                );
            }
        }
    }
    // Heads of 8: tf32 and tf32x3, not bf16; fp32 follows its GEMMs.
    // Heads of 12: no format is built, and the device opens without them.
    if targets("8-wide heads").contains(&Target::Emulated) {
        let mut dev = CudaDevice::emulated(8).unwrap();
        assert_eq!(dev.attention_format(Precision::Tf32), Some(MmaFormat::Tf32));
        assert_eq!(dev.attention_format(Precision::Bf16), None);
        dev.fp32_gemm = Fp32Gemm::Tf32x3;
        assert_eq!(
            dev.attention_format(Precision::Fp32),
            Some(MmaFormat::Tf32x3)
        );
        dev.fp32_gemm = Fp32Gemm::Sgemm;
        assert_eq!(dev.attention_format(Precision::Fp32), None);
        assert!(CudaDevice::emulated(12).unwrap().tensor_cores.is_empty());
    }
}

/// A GEMM writes bf16 only from bf16 inputs and without accumulating (the
/// forward's outputs in bf16); anything else is refused before a launch.
#[test]
fn a_bf16_gemm_output_needs_bf16_inputs() {
    if !targets("bf16 GEMM outputs").contains(&Target::Emulated) {
        return;
    }
    let dev = CudaDevice::emulated(8).unwrap();
    for (precision, accumulate) in [
        (Precision::Fp32, false),
        (Precision::Tf32, false),
        (Precision::Bf16, true),
    ] {
        let err = dev
            .linear(precision, 0, 0, 2, 3, 4, GemmOut::Bf16(0), accumulate)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a bf16 GEMM output needs bf16 inputs and cannot accumulate"),
            "{precision:?}, accumulate {accumulate}: {err}"
        );
    }
}

/// x as 3xTF32's (hi, lo), as kernels/tf32x3.cuh's split_tf32 documents
/// it: hi = x rounded to tf32 (its truncation where rounding overflows),
/// lo = the rest rounded to tf32; a non-finite x is (x, 0).
fn split_tf32(x: f32) -> (f32, f32) {
    if !x.is_finite() {
        return (x, 0.0);
    }
    let mut hi = tf32x3::tf32_round(x);
    if hi.is_infinite() {
        hi = f32::from_bits(x.to_bits() & 0xffff_e000);
    }
    (hi, tf32x3::tf32_round(x - hi))
}

/// The device splits every value as documented, bit for bit, special
/// values and 100 000 random bit patterns included, in place too (as the
/// weights are split when uploaded); both parts are tf32 and leave at most
/// 2^-22 of x.
#[test]
fn split_tf32_gives_two_exact_tf32_parts() {
    for target in targets("split_tf32_gives_two_exact_tf32_parts") {
        let dev = open(target, 8);
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            f32::MAX,
            -f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        values.extend((0..100_000).map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            f32::from_bits((state >> 32) as u32)
        }));
        let n = values.len();
        let mut x = DevBuf::<f32>::default();
        x.upload(&dev, &values).unwrap();
        let mut parts = DevBuf::<f32>::default();
        parts.ensure(&dev, 2 * n).unwrap();
        let lo = parts.ptr + 4 * n as u64;
        let split = |x: u64, hi: u64, parts: &DevBuf<f32>| {
            dev.launch_1d(Kernel::SplitTf32, n, &[&x, &hi, &lo, &(n as u64)])
                .unwrap();
            let got = parts.download(&dev, 2 * n).unwrap();
            (got[..n].to_vec(), got[n..].to_vec())
        };
        let (hi, lo) = split(x.ptr, parts.ptr, &parts);
        for (i, &v) in values.iter().enumerate() {
            let want = split_tf32(v);
            assert_eq!(
                (hi[i].to_bits(), lo[i].to_bits()),
                (want.0.to_bits(), want.1.to_bits()),
                "{target:?}: split of {v:e}"
            );
            if !v.is_finite() {
                assert_eq!(lo[i], 0.0, "{v}");
                continue;
            }
            assert_eq!(hi[i].to_bits() & 0x1fff, 0, "{target:?}: hi of {v:e}");
            assert_eq!(lo[i].to_bits() & 0x1fff, 0, "{target:?}: lo of {v:e}");
            let rest = (v as f64 - hi[i] as f64 - lo[i] as f64).abs();
            // Below the normal range lo's rounding is absolute, not relative.
            assert!(
                rest <= (v.abs() as f64) * 2f64.powi(-22) + 2f64.powi(-149 + 13),
                "{target:?}: {v:e} = {:e} + {:e} leaves {rest:e}",
                hi[i],
                lo[i]
            );
        }
        assert_eq!((hi[2], lo[2]), (1.0, 0.0));
        // f32::MAX would round to infinity: hi is its truncation.
        assert!(hi[3].is_finite() && lo[3] > 0.0);
        assert!(hi[9].is_nan());
        // In place, hi over x (parts zeroed first): the same parts.
        parts.zero(&dev).unwrap();
        let (_, lo_in_place) = split(x.ptr, x.ptr, &parts);
        let hi_in_place = x.download(&dev, n).unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&hi_in_place), bits(&hi), "{target:?}: hi in place");
        assert_eq!(bits(&lo_in_place), bits(&lo), "{target:?}: lo in place");
    }
}

/// fp32 by 3xTF32 (engine/cuda/tf32x3.rs) is as accurate as SGEMM, in the
/// forward's GEMM and in the backward's (accumulating), where one tf32 GEMM
/// is far less so.
#[test]
fn fp32_by_3xtf32_is_as_accurate_as_sgemm() {
    for target in targets("fp32_by_3xtf32_is_as_accurate_as_sgemm") {
        let dev = open(target, 8);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        // Signs, and magnitudes over 2^-6 .. 2^6.
        let mut value = || ((2.0 * uniform() - 1.0) * (12.0 * uniform() - 6.0).exp2()) as f32;
        let upload = |v: &[f32]| {
            let mut b = DevBuf::<f32>::default();
            b.upload(&dev, v).unwrap();
            b
        };

        // Sums as long as a BERT layer's (1024 and 512 terms): where the
        // tensor cores' own accumulation would show.
        let (rows, out, inp) = (32, 512, 1024);
        let xs: Vec<f32> = (0..rows * inp).map(|_| value()).collect();
        let ws: Vec<f32> = (0..out * inp).map(|_| value()).collect();
        let dys: Vec<f32> = (0..rows * out).map(|_| value()).collect();
        let dx0: Vec<f32> = (0..rows * inp).map(|_| value()).collect();
        // Each output's error over Σ|terms|, against f64.
        let forward_want: Vec<(f64, f64)> = (0..rows * out)
            .map(|e| {
                let (r, o) = (e / out, e % out);
                (0..inp)
                    .map(|k| xs[r * inp + k] as f64 * ws[o * inp + k] as f64)
                    .fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()))
            })
            .collect();
        let backward_want: Vec<(f64, f64)> = (0..rows * inp)
            .map(|e| {
                let (r, k) = (e / inp, e % inp);
                (0..out)
                    .map(|o| dys[r * out + o] as f64 * ws[o * inp + k] as f64)
                    .fold((dx0[e] as f64, (dx0[e] as f64).abs()), |(s, a), t| {
                        (s + t, a + t.abs())
                    })
            })
            .collect();
        let error = |got: &[f32], want: &[(f64, f64)]| {
            got.iter()
                .zip(want)
                .map(|(&g, &(s, a))| (g as f64 - s).abs() / a)
                .fold(0.0f64, f64::max)
        };
        let (x, w, dy) = (upload(&xs), upload(&ws), upload(&dys));
        let split = SplitWeight::upload(&dev, &ws).unwrap();
        let mut errors = Vec::new();
        for mode in ["SGEMM", "TF32", "3xTF32"] {
            let (y, dx) = (upload(&vec![f32::NAN; rows * out]), upload(&dx0));
            let (yo, dxo) = (GemmOut::F32(y.ptr), GemmOut::F32(dx.ptr));
            let (p, w) = match mode {
                "3xTF32" => (Precision::Fp32, split.operand()),
                "TF32" => (Precision::Tf32, Operand::Plain(w.ptr)),
                _ => (Precision::Fp32, Operand::Plain(w.ptr)),
            };
            dev.linear(p, x.ptr, w, rows, out, inp, yo, false).unwrap();
            dev.linear_backward_input(p, dy.ptr, w, rows, out, inp, dxo, true)
                .unwrap();
            let fwd = error(&y.download(&dev, rows * out).unwrap(), &forward_want);
            let bwd = error(&dx.download(&dev, rows * inp).unwrap(), &backward_want);
            eprintln!("{target:?} {mode}: forward error {fwd:e}, backward {bwd:e} (of Σ|terms|)");
            errors.push((fwd, bwd));
        }
        // A split weight stands for an f32 one only.
        let e = dev
            .linear(
                Precision::Tf32,
                x.ptr,
                split.operand(),
                rows,
                out,
                inp,
                GemmOut::F32(0),
                false,
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a split (3xTF32) weight is for fp32 GEMMs, not tf32"),
            "{e}"
        );
        let [(sf, sb), (tf, tb), (xf, xb)] = errors[..] else {
            unreachable!()
        };
        // Within 4 SGEMM errors, or 2^-20 (16 f32 roundings) of Σ|terms|.
        for (what, x3, sgemm, tf32) in [("forward", xf, sf, tf), ("backward", xb, sb, tb)] {
            assert!(
                x3 <= (4.0 * sgemm).max(2f64.powi(-20)),
                "{target:?} {what}: 3xTF32 error {x3:e}, SGEMM's {sgemm:e}"
            );
            assert!(
                tf32 >= 30.0 * x3,
                "{target:?} {what}: tf32 error {tf32:e}, 3xTF32's {x3:e}"
            );
        }
    }
}

/// The device counts the bytes its buffers hold (what `bench` reports as
/// device memory): a buffer adds its size, growing replaces it, dropping
/// gives it back; 3xTF32 holds each linear weight twice (its two parts);
/// a training step's workspaces raise the peak above the weights.
#[test]
fn device_memory_is_counted() {
    if !targets("device_memory_is_counted").contains(&Target::Emulated) {
        return;
    }
    let dev = CudaDevice::emulated(8).unwrap();
    let base = dev.memory().now;
    let mut buf = DevBuf::<f32>::default();
    buf.ensure(&dev, 1000).unwrap();
    assert_eq!(dev.memory().now, base + 4000);
    buf.ensure(&dev, 500).unwrap();
    assert_eq!(
        dev.memory().now,
        base + 4000,
        "a smaller ensure keeps the block"
    );
    buf.ensure(&dev, 3000).unwrap();
    assert_eq!(dev.memory().now, base + 12000, "growing replaces the block");
    assert_eq!(dev.memory().peak, base + 12000);
    drop(buf);
    assert_eq!(dev.memory().now, base);
    assert_eq!(dev.memory().peak, base + 12000);
    dev.reset_peak();
    assert_eq!(dev.memory().peak, base);

    let case = Case::load("tiny_bert_plain");
    let linear_bytes: usize = case
        .model()
        .backbone
        .layers
        .iter()
        .map(|l| {
            [
                &l.attention.self_attention.qkv,
                &l.attention.output.dense,
                &l.intermediate.dense,
                &l.output.dense,
            ]
            .iter()
            .map(|d| d.weight.len() * 4)
            .sum::<usize>()
        })
        .sum();
    let mut held = Vec::new();
    for mode in [Fp32Gemm::Sgemm, Fp32Gemm::Tf32x3] {
        let mut model = case.model();
        attach_with(&mut model, Target::Emulated, Precision::Fp32, Some(mode));
        let gpu = Arc::clone(model.gpu.as_ref().unwrap());
        let loaded = gpu.lock().unwrap().dev.memory();
        case.step(&mut model);
        let stepped = gpu.lock().unwrap().dev.memory();
        assert!(
            stepped.peak > loaded.now && stepped.now > loaded.now,
            "{mode:?}: {loaded:?} then {stepped:?}"
        );
        held.push(loaded.now);
    }
    assert_eq!(held[1] - held[0], linear_bytes, "{held:?}");
}

/// Training on a GPU keeps the prompt there (a plain table, or the MLP's
/// parameters): the update (optimizer_step, adamw_step on the device) is
/// the host's AdamW bit for bit on the same gradients, clipping agrees, and
/// sync_host brings the values and the moments back.
#[test]
fn device_optimizer_matches_the_host() {
    for target in targets("device_optimizer_matches_the_host") {
        // A plain table, and the MLP reparameterization (its five tensors
        // on the device, its forward and backward there).
        for name in ["tiny_bert_plain", "tiny_bert_mlp_subset"] {
            let case = Case::load(name);
            let mut model = case.model();
            attach(&mut model, target, Precision::Fp32);
            let mut host = case.model();
            let batch = case.batch();
            let labels = case.labels();
            let config = AdamWConfig::default();
            let (mut opt_dev, mut opt_host) = (AdamW::new(config.clone()), AdamW::new(config));
            let dropout = DropoutConfig {
                hidden: 0.1,
                attention: 0.1,
                seed: 3,
            };
            let n = model.prefix.params_mut().len();
            // No clipping, then a norm small enough to clip every step.
            for (step, max_norm) in [0.0f32, 1e-3, 1e-3].into_iter().enumerate() {
                case.step_with(&mut model, &dropout);
                // The host model gets the same values and gradients.
                model.grads_to_host().unwrap();
                for (h, m) in host.params_mut().into_iter().zip(model.params_mut()) {
                    h.value.clone_from(&m.value);
                    h.grad.clone_from(&m.grad);
                }
                host.optimizer_step(&mut opt_host, 1e-2, max_norm).unwrap();
                model.optimizer_step(&mut opt_dev, 1e-2, max_norm).unwrap();
                model.sync_host(&mut opt_dev).unwrap();
                let (mut hp, mut mp) = (host.params_mut(), model.params_mut());
                for (h, m) in hp.iter_mut().zip(mp.iter_mut()).take(n) {
                    if max_norm == 0.0 {
                        assert_eq!(
                            m.value, h.value,
                            "{name} step {step}: {} differs from the host's update",
                            h.name
                        );
                    } else {
                        let e = max_abs_diff(&m.value, &h.value);
                        assert!(
                            e <= 1e-6,
                            "{name} step {step}, clipped: {} differs by {e}",
                            h.name
                        );
                    }
                }
                if max_norm == 0.0 {
                    assert_eq!(opt_dev.moments, opt_host.moments, "{name} step {step}");
                } else {
                    for (x, y) in opt_dev.moments.iter().zip(&opt_host.moments) {
                        assert!(rel_err(&x.m, &y.m) <= 1e-5 && rel_err(&x.v, &y.v) <= 1e-5);
                    }
                }
                for (h, m) in hp.iter().zip(&mp) {
                    assert!(max_abs_diff(&h.value, &m.value) <= 1e-6, "{}", h.name);
                }
                assert_eq!(opt_dev.step, opt_host.step);
            }
            // zero_grad, then two backwards: the device gradients accumulate
            // as a host parameter's do (exactly for the table, whose sum is
            // one kernel's; cuBLAS may sum the MLP's differently with β = 1).
            let grads = |model: &mut PromptModel| -> Vec<Vec<f32>> {
                model.grads_to_host().unwrap();
                model
                    .prefix
                    .params_mut()
                    .iter()
                    .map(|p| p.grad.clone())
                    .collect()
            };
            case.step(&mut model);
            let once = grads(&mut model);
            model.zero_grad();
            assert!(grads(&mut model).iter().flatten().all(|&g| g == 0.0));
            case.step(&mut model);
            model
                .forward_backward(
                    &batch,
                    Targets::Classes(&labels),
                    &DropoutConfig::OFF,
                    &mut Activations::default(),
                )
                .unwrap();
            for (twice, once) in grads(&mut model).iter().zip(&once) {
                let doubled: Vec<f32> = once.iter().map(|g| g + g).collect();
                if n == 1 {
                    assert_eq!(twice, &doubled, "{name}");
                } else {
                    let e = rel_err(twice, &doubled);
                    assert!(e <= 1e-6, "{name}: accumulated gradient off by {e}");
                }
            }
        }
    }
}

/// The CLI's whole CUDA path without a GPU: with PTUNING_CUDA_EMULATOR=1,
/// GPU 0 is the CPU emulation of the kernels, so `--device cuda` trains,
/// checkpoints, resumes, evaluates and predicts through the CUDA engine (the
/// prompt and its AdamW moments resident on the device, coming back at each
/// epoch). A tiny task's run matches the CPU run within fp32's error,
/// resumes to the same bytes, and predicts and serves (over HTTP) what the
/// CPU predicts; `bench --profile` times its kernels.
#[test]
fn the_cli_runs_on_the_emulated_gpu() {
    if emulator_compiler().is_none() {
        return;
    }
    let bin = ptuning_bin();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    std::fs::write(
        data.join("train.csv"),
        "text,label\n\"a b c\",pos\n\"d e f\",neg\n\"a a b\",pos\n\"e e d\",neg\n\"c b a\",pos\n\"f d e\",neg\n",
    )
    .unwrap();
    std::fs::write(
        data.join("dev.csv"),
        "text,label\n\"a b\",pos\n\"d f\",neg\n",
    )
    .unwrap();
    std::fs::write(
        data.join("in.jsonl"),
        "{\"text\": \"a b c\"}\n{\"text\": \"d e\"}\n",
    )
    .unwrap();
    let tiny = common::fixtures().join("tiny-bert");
    // `order`: the emulated threads' (PTUNING_EMU_ORDER). (stdout, stderr).
    let ptuning = |(device, order): (&str, &str), args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .env("PTUNING_CUDA_EMULATOR", "1")
            .env("PTUNING_EMU_ORDER", order)
            .args(["--device", device])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{device} {order} {args:?}:\n{err}");
        (out.stdout, err)
    };
    // The runs' settings: 2 epochs of 2 batches, prefix 4.
    let settings = [
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--prefix-len",
        "4",
        "--max-seq-len",
        "32",
        "--quiet",
    ];
    let train = |device: (&str, &str), out: &str, extra: &[&str]| {
        let paths =
            [data.to_path_buf(), data.join(out), tiny.clone()].map(|p| p.display().to_string());
        let mut args = vec![
            "train",
            "--task",
            "custom/classification",
            "--data",
            &paths[0],
            "--out",
            &paths[1],
            "--model",
            &paths[2],
        ];
        args.extend(settings);
        args.extend(extra);
        ptuning(device, &args);
    };
    // An adapter's tensors, by name.
    let tensors = |run: &str| -> Vec<(String, Vec<f32>)> {
        let file = WeightFile::open(&data.join(run).join("adapter_model.safetensors")).unwrap();
        file.names()
            .into_iter()
            .map(|name| {
                let (values, _) = file.tensor_f32(&name).unwrap();
                (name, values)
            })
            .collect()
    };

    let (on_cpu, on_gpu) = (("cpu", "forward"), ("cuda", "forward"));
    train(on_cpu, "cpu", &[]);
    train(on_gpu, "cuda", &[]);
    // fp32 (3xTF32 on the emulated device) after 4 AdamW steps: the prompt
    // and the head within 1e-4 of their largest value.
    let close = |cpu: &[(String, Vec<f32>)], gpu: &[(String, Vec<f32>)]| {
        assert_eq!(cpu.len(), gpu.len());
        for ((name, want), (got_name, got)) in cpu.iter().zip(gpu) {
            assert_eq!(name, got_name);
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let diff = want
                .iter()
                .zip(got)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff <= 1e-4 * scale, "{name}: {diff} against {scale}");
        }
    };
    let gpu = tensors("cuda/last");
    close(&tensors("cpu/last"), &gpu);
    // Stopped after the first epoch and resumed on the device: the same
    // bytes as the run that went straight through.
    train(on_gpu, "resumed", &["--stop-after-epoch", "1"]);
    train(on_gpu, "resumed", &["--resume"]);
    assert_eq!(tensors("resumed/last"), gpu);
    // Prompt tuning on the device (its backward through every layer and
    // the embeddings' LayerNorm): the same as on the CPU.
    let shallow = ["--method", "prompt-tuning"];
    train(on_cpu, "pt-cpu", &shallow);
    train(on_gpu, "pt-cuda", &shallow);
    close(&tensors("pt-cpu/last"), &tensors("pt-cuda/last"));
    // Multi-task on the device: the prompt stays there while the heads
    // change places on the host; the same as on the CPU.
    let other = data.join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(
        other.join("train.csv"),
        "text,label\n\"a b\",x\n\"c d\",y\n\"e f\",z\n\"b a\",x\n\"d c\",y\n",
    )
    .unwrap();
    std::fs::write(other.join("dev.csv"), "text,label\n\"a\",x\n\"d\",y\n").unwrap();
    let tasks = format!(
        "custom/classification={},custom/classification={}",
        data.display(),
        other.display()
    );
    let multi = |device: (&str, &str), out: &str| {
        let paths = [data.join(out), tiny.clone()].map(|p| p.display().to_string());
        let mut args = vec![
            "train", "--tasks", &tasks, "--out", &paths[0], "--model", &paths[1],
        ];
        args.extend(settings);
        ptuning(device, &args);
    };
    multi(on_cpu, "mt-cpu");
    multi(on_gpu, "mt-cuda");
    let first = format!(
        "custom-classification-{}",
        data.file_name().unwrap().to_string_lossy()
    );
    for slug in [first.as_str(), "custom-classification-other"] {
        close(
            &tensors(&format!("mt-cpu/last/{slug}")),
            &tensors(&format!("mt-cuda/last/{slug}")),
        );
    }
    // The threads of every block in reverse order: the same bytes again,
    // in the launch shapes of a real run (a race that changed any value
    // here would not; the kernel checks above cover the other shapes).
    train(("cuda", "reverse"), "reversed", &[]);
    assert_eq!(tensors("reversed/last"), gpu);
    // The CPU run's checkpoint predicts the same on the emulated GPU, in
    // bf16 too (within its error).
    let predict = |device: (&str, &str), precision: &str, out: &str| -> Vec<f64> {
        let run = data.join("cpu/best").display().to_string();
        let input = data.join("in.jsonl").display().to_string();
        let path = data.join(out);
        ptuning(
            device,
            &[
                "--precision",
                precision,
                "predict",
                "--run",
                &run,
                "--input",
                &input,
                "--out",
                &path.display().to_string(),
            ],
        );
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .flat_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                serde_json::from_value::<Vec<f64>>(v["scores"].clone()).unwrap()
            })
            .collect()
    };
    let want = predict(on_cpu, "fp32", "cpu.jsonl");
    assert_eq!(want.len(), 4);
    for (precision, tol) in [("fp32", 1e-5), ("bf16", 1e-2)] {
        let got = predict(on_gpu, precision, &format!("cuda-{precision}.jsonl"));
        for (a, b) in want.iter().zip(&got) {
            assert!(
                (a - b).abs() <= tol,
                "{precision}: {got:?} against {want:?}"
            );
        }
    }

    // Served from the emulated GPU: the same scores over HTTP.
    let got = serve_on_the_emulated_gpu(&bin, &tiny, &data.join("cpu"));
    for (a, b) in want.iter().zip(&got) {
        assert!((a - b).abs() <= 1e-5, "served {got:?} against {want:?}");
    }

    // bench --profile on the emulated GPU: every kernel timed, and the
    // matrix products' TFLOP/s worked out from their shapes.
    let model = tiny.display().to_string();
    let (out, err) = ptuning(
        on_gpu,
        &[
            "bench",
            "--model",
            &model,
            "--batch",
            "2",
            "--seq",
            "8",
            "--prefix-len",
            "4",
            "--warmup",
            "0",
            "--iters",
            "1",
            "--profile",
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["device"], "CPU emulation of the CUDA kernels");
    let rate = |kernel: &str| {
        err.lines()
            .find(|l| l.split_whitespace().next() == Some(kernel))
            .and_then(|l| l.split_whitespace().last())
            .map(str::to_string)
    };
    for kernel in ["attention_forward_tf32x3", "attention_backward_dkv_tf32x3"] {
        let tflops = rate(kernel).unwrap_or_else(|| panic!("no {kernel} in\n{err}"));
        assert!(tflops.parse::<f64>().is_ok(), "{kernel}: {tflops}\n{err}");
    }
    assert_eq!(
        rate("bias_dropout_residual_layernorm").as_deref(),
        Some("-"),
        "{err}"
    );
}

/// `ptuning --device cuda serve` of the run in `run` on the emulated GPU:
/// the scores of the classes of "a b c" and "d e", over HTTP.
fn serve_on_the_emulated_gpu(bin: &std::ffi::OsStr, model: &Path, run: &Path) -> Vec<f64> {
    use std::io::{BufRead, Read, Write};
    let mut server = std::process::Command::new(bin)
        .env("PTUNING_CUDA_EMULATOR", "1")
        .args([
            "--device",
            "cuda",
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--model",
        ])
        .arg(model)
        .arg("--adapter")
        .arg(format!("cls={}", run.display()))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The port the server took, from its "listening on http://ADDR" line.
    let mut log = std::io::BufReader::new(server.stderr.take().unwrap());
    let mut seen = String::new();
    let addr = loop {
        let mut line = String::new();
        if log.read_line(&mut line).unwrap() == 0 {
            let _ = server.kill();
            panic!("the server stopped:\n{seen}");
        }
        seen.push_str(&line);
        if let Some(at) = line.trim().strip_prefix("listening on http://") {
            break at.split_whitespace().next().unwrap().to_string();
        }
    };
    let body = r#"{"inputs": ["a b c", "d e"]}"#;
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST /v1/adapters/cls/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let json = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    let reply: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {reply}"));
    reply["outputs"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"))
        .iter()
        .flat_map(|o| serde_json::from_value::<Vec<f64>>(o["scores"].clone()).unwrap())
        .collect()
}

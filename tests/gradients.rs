//! Properties of the training step that hold whatever the reference says:
//! the prefix gradient matches finite differences of the loss, a step without
//! dropout is deterministic, dropout follows its seed, and folding the
//! reparameterization keeps the logits.

use std::path::Path;
use std::sync::Arc;

use ptuning::engine::cpu::loss::IGNORE;
use ptuning::model::batch::Batch;
use ptuning::model::bert::BertModel;
use ptuning::model::encoder::{Activations, DropoutConfig};
use ptuning::model::heads::{ClassificationHead, HeadKind};
use ptuning::model::prefix::{PrefixConfig, PrefixEncoder, PromptMethod};
use ptuning::model::prompt_model::{PromptModel, Targets};

fn tiny_model(projection: bool, layers: Vec<usize>) -> PromptModel {
    tiny_model_with(PromptMethod::PTuningV2, projection, layers)
}

/// The tiny model with prompt tuning's prompt in front of the input.
fn tiny_prompt_tuning(projection: bool) -> PromptModel {
    tiny_model_with(PromptMethod::PromptTuning, projection, vec![])
}

fn tiny_model_with(method: PromptMethod, projection: bool, layers: Vec<usize>) -> PromptModel {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert");
    let backbone = Arc::new(BertModel::load(&dir).unwrap());
    let c = backbone.config.clone();
    let prefix = PrefixEncoder::new(
        PrefixConfig {
            method,
            len: 3,
            projection,
            hidden_size: 8,
            layers,
        },
        c.hidden_size,
        c.num_hidden_layers,
        11,
    )
    .unwrap();
    let mut head = ClassificationHead::new(c.hidden_size, 3, 12);
    // A non-zero bias and larger weights so that every path carries gradient.
    head.weight.value.iter_mut().for_each(|w| *w *= 20.0);
    head.bias.value = vec![0.1, -0.2, 0.3];
    PromptModel {
        backbone,
        prefix,
        head,
        gpu: None,
    }
}

fn tiny_batch() -> (Batch, Vec<usize>) {
    let seqs = vec![
        (vec![2, 17, 33, 52, 7, 3], vec![0, 0, 0, 1, 1, 1]),
        (vec![2, 40, 9, 3], vec![0, 0, 0, 0]),
        (vec![2, 5, 3], vec![0, 0, 1]),
    ];
    (Batch::pad(&seqs, 0).unwrap(), vec![0, 2, 1])
}

fn loss(model: &mut PromptModel, batch: &Batch, labels: &[usize]) -> f64 {
    loss_of(model, batch, Targets::Classes(labels), &DropoutConfig::OFF)
}

fn loss_of(
    model: &mut PromptModel,
    batch: &Batch,
    targets: Targets<'_>,
    dropout: &DropoutConfig,
) -> f64 {
    let mut acts = Activations::default();
    model.zero_grad();
    model
        .forward_backward(batch, targets, dropout, &mut acts)
        .unwrap()
        .loss as f64
}

/// Central differences of the loss against the analytical gradient of entries
/// sampled from every trainable tensor (prefix, its MLP, the head).
fn check_finite_differences(model: PromptModel, batch: &Batch, targets: Targets<'_>) {
    check_finite_differences_with(model, batch, targets, &DropoutConfig::OFF);
}

/// [`check_finite_differences`] with `dropout`: its masks are functions of
/// the seed, the same in every evaluation of the loss.
fn check_finite_differences_with(
    mut model: PromptModel,
    batch: &Batch,
    targets: Targets<'_>,
    dropout: &DropoutConfig,
) {
    loss_of(&mut model, batch, targets, dropout);
    let grads: Vec<Vec<f32>> = model.params_mut().iter().map(|p| p.grad.clone()).collect();
    let h = 1e-2f32;
    for (pi, grad) in grads.iter().enumerate() {
        let max = grad.iter().fold(0f32, |m, g| m.max(g.abs()));
        assert!(max > 0.0, "parameter {pi} has an all-zero gradient");
        // 12 entries spread over the tensor.
        let step = (grad.len() / 12).max(1);
        for idx in (0..grad.len()).step_by(step) {
            let orig = model.params_mut()[pi].value[idx];
            model.params_mut()[pi].value[idx] = orig + h;
            let up = loss_of(&mut model, batch, targets, dropout);
            model.params_mut()[pi].value[idx] = orig - h;
            let down = loss_of(&mut model, batch, targets, dropout);
            model.params_mut()[pi].value[idx] = orig;
            let numeric = ((up - down) / (2.0 * h as f64)) as f32;
            let err = (numeric - grad[idx]).abs();
            assert!(
                err <= 2e-2 * max + 1e-4,
                "param {pi} entry {idx}: analytical {} vs numerical {numeric} (max |g| {max})",
                grad[idx]
            );
        }
    }
}

/// The tiny model with a 1-output head (multiple choice, regression).
fn tiny_scorer() -> PromptModel {
    let mut model = tiny_model(false, vec![0, 1, 2]);
    let mut head = ClassificationHead::new(32, 1, 13);
    head.weight.value.iter_mut().for_each(|w| *w *= 20.0);
    model.head = head;
    model
}

#[test]
fn plain_prefix_gradient_matches_finite_differences() {
    let (batch, labels) = tiny_batch();
    let model = tiny_model(false, vec![0, 1, 2]);
    check_finite_differences(model, &batch, Targets::Classes(&labels));
}

#[test]
fn reparameterized_prefix_gradient_matches_finite_differences() {
    let (batch, labels) = tiny_batch();
    let model = tiny_model(true, vec![1, 2]);
    check_finite_differences(model, &batch, Targets::Classes(&labels));
}

#[test]
fn multiple_choice_gradient_matches_finite_differences() {
    // 2 examples × 2 choices: sequences (0, 1) and (2, 3).
    let seqs = vec![
        (vec![2, 17, 33, 3, 52, 3], vec![0, 0, 0, 0, 1, 1]),
        (vec![2, 17, 33, 3, 9, 3], vec![0, 0, 0, 0, 1, 1]),
        (vec![2, 40, 3, 7, 3], vec![0, 0, 0, 1, 1]),
        (vec![2, 40, 3, 11, 3], vec![0, 0, 0, 1, 1]),
    ];
    let batch = Batch::pad(&seqs, 0).unwrap();
    let targets = Targets::Choices {
        choices: 2,
        labels: &[1, 0],
    };
    check_finite_differences(tiny_scorer(), &batch, targets);
}

#[test]
fn regression_gradient_matches_finite_differences() {
    let (batch, _) = tiny_batch();
    check_finite_differences(tiny_scorer(), &batch, Targets::Scores(&[0.5, -1.0, 2.0]));
}

#[test]
fn a_step_without_dropout_is_deterministic() {
    let (batch, labels) = tiny_batch();
    let mut a = tiny_model(false, vec![0, 1, 2]);
    let mut b = tiny_model(false, vec![0, 1, 2]);
    let mut acts = Activations::default();
    let la = a
        .forward_backward(
            &batch,
            Targets::Classes(&labels),
            &DropoutConfig::OFF,
            &mut acts,
        )
        .unwrap();
    // Reused activations must not leak into the next step.
    let lb = b
        .forward_backward(
            &batch,
            Targets::Classes(&labels),
            &DropoutConfig::OFF,
            &mut acts,
        )
        .unwrap();
    assert_eq!(la.loss.to_bits(), lb.loss.to_bits());
    assert_eq!(la.logits, lb.logits);
    assert_eq!(a.prefix.embedding.grad, b.prefix.embedding.grad);
    // Inference gives the same logits as the training forward without dropout.
    let logits = a.predict(&batch).unwrap();
    let d = logits
        .iter()
        .zip(&la.logits)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(d < 1e-6, "inference and training logits differ by {d}");
}

#[test]
fn dropout_follows_its_seed() {
    let (batch, labels) = tiny_batch();
    let mut model = tiny_model(false, vec![0, 1, 2]);
    let mut acts = Activations::default();
    let mut run = |seed| {
        let dropout = DropoutConfig {
            hidden: 0.1,
            attention: 0.1,
            seed,
        };
        model.zero_grad();
        let out = model
            .forward_backward(&batch, Targets::Classes(&labels), &dropout, &mut acts)
            .unwrap();
        (out.loss, model.prefix.embedding.grad.clone())
    };
    let (l1, g1) = run(5);
    let (l2, g2) = run(5);
    let (l3, _) = run(6);
    assert_eq!(l1.to_bits(), l2.to_bits());
    assert_eq!(g1, g2);
    assert_ne!(l1, l3, "a different seed should drop different units");
    let off = loss(&mut tiny_model(false, vec![0, 1, 2]), &batch, &labels) as f32;
    assert_ne!(l1, off, "dropout 0.1 should change the loss");
}

#[test]
fn folding_the_reparameterization_keeps_the_logits() {
    let (batch, _) = tiny_batch();
    let mut model = tiny_model(true, vec![1, 2]);
    let before = model.predict(&batch).unwrap();
    model.prefix = model.prefix.fold();
    assert!(model.prefix.trans.is_none());
    assert_eq!(model.prefix.embedding.shape, vec![3, 2 * 2 * 32]);
    let after = model.predict(&batch).unwrap();
    let d = before
        .iter()
        .zip(&after)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(d < 1e-6, "folded logits differ by {d}");
}

#[test]
fn a_prefix_only_on_top_layers_leaves_lower_layers_untouched() {
    // Without a prefix at layers 0 and 1, their outputs equal the plain
    // backbone's at the same (shifted) positions; only layer 2 differs.
    let (batch, _) = tiny_batch();
    let model = tiny_model(false, vec![2]);
    let prefix = model.prefix.forward();
    let prompt = model.prefix.expand(&prefix.past, batch.batch, None);
    let mut with = Vec::new();
    model
        .backbone
        .forward_observed(&batch, Some(&prompt), |_, h| with.push(h.to_vec()))
        .unwrap();
    let empty = ptuning::model::prefix::BatchPrompt {
        method: PromptMethod::PTuningV2,
        len: 3,
        layers: vec![],
        kv: vec![],
    };
    let mut without = Vec::new();
    model
        .backbone
        .forward_observed(&batch, Some(&empty), |_, h| without.push(h.to_vec()))
        .unwrap();
    assert_eq!(with[..3], without[..3]);
    assert_ne!(with[3], without[3]);
}

#[test]
fn bad_batches_are_clear_errors() {
    let model = tiny_model(false, vec![0, 1, 2]);
    let too_long = vec![(vec![2u32; 62], vec![0u32; 62])];
    let err = model
        .predict(&Batch::pad(&too_long, 0).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_position_embeddings"), "{err}");
    let bad_id = vec![(vec![2u32, 5000], vec![0u32, 0])];
    let err = model
        .predict(&Batch::pad(&bad_id, 0).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("token id 5000"), "{err}");
    let mut m = tiny_model(false, vec![0]);
    let (batch, _) = tiny_batch();
    let err = m
        .forward_backward(
            &batch,
            Targets::Classes(&[0, 1, 7]),
            &DropoutConfig::OFF,
            &mut Activations::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 7"), "{err}");
    let err = m
        .forward_backward(
            &batch,
            Targets::Choices {
                choices: 2,
                labels: &[0],
            },
            &DropoutConfig::OFF,
            &mut Activations::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("1-output head"), "{err}");
    assert!(Batch::pad(&[], 0).is_err());
}

#[test]
fn token_classification_gradient_matches_finite_differences() {
    let (batch, _) = tiny_batch();
    let mut model = tiny_model(false, vec![0, 1, 2]);
    model.head = ClassificationHead::for_kind(HeadKind::TokenClassification, 32, 4, 14);
    model.head.weight.value.iter_mut().for_each(|w| *w *= 20.0);
    // [B*T] = 3 × 6 tags; specials and padding ignored.
    let i = IGNORE;
    let tags = [i, 1, 0, 3, 2, i, i, 2, 0, i, i, i, i, 1, i, i, i, i];
    check_finite_differences(model, &batch, Targets::Tokens(&tags));
}

#[test]
fn span_gradient_matches_finite_differences() {
    let (batch, _) = tiny_batch();
    let mut model = tiny_model(true, vec![1, 2]);
    model.head = ClassificationHead::for_kind(HeadKind::QuestionAnswering, 32, 2, 15);
    model.head.weight.value.iter_mut().for_each(|w| *w *= 20.0);
    let targets = Targets::Spans {
        start: &[1, 2, 0],
        end: &[4, 2, 0],
    };
    check_finite_differences(model, &batch, targets);
}

#[test]
fn prompt_tuning_gradient_matches_finite_differences_through_dropout() {
    // The backward runs through every layer, the embeddings' dropout and
    // LayerNorm to the prompt's rows.
    let (batch, labels) = tiny_batch();
    let dropout = DropoutConfig {
        hidden: 0.1,
        attention: 0.1,
        seed: 3,
    };
    check_finite_differences_with(
        tiny_prompt_tuning(false),
        &batch,
        Targets::Classes(&labels),
        &dropout,
    );
    check_finite_differences(tiny_prompt_tuning(true), &batch, Targets::Classes(&labels));
}

#[test]
fn prompt_tuning_span_head_reads_the_tokens_after_the_prompt() {
    let (batch, _) = tiny_batch();
    let mut model = tiny_prompt_tuning(false);
    model.head = ClassificationHead::for_kind(HeadKind::QuestionAnswering, 32, 2, 15);
    model.head.weight.value.iter_mut().for_each(|w| *w *= 20.0);
    // [B·T, 2]: one start and one end logit per real token, none for the prompt.
    let logits = model.predict(&batch).unwrap();
    assert_eq!(logits.len(), batch.rows() * 2);
    let targets = Targets::Spans {
        start: &[1, 2, 0],
        end: &[4, 2, 0],
    };
    check_finite_differences(model, &batch, targets);
}

#[test]
fn prompt_tuning_reaches_every_token_and_has_no_layers() {
    // Changing the prompt changes every sequence's first token: it is
    // attended from the first layer on. A layer selection is refused.
    let (batch, _) = tiny_batch();
    let mut model = tiny_prompt_tuning(false);
    let h = 32;
    let seq = batch.seq + 3;
    let states = |model: &PromptModel| {
        let table = model.prefix.table();
        let prompt = model.prefix.expand(&table, batch.batch, None);
        model.backbone.forward(&batch, Some(&prompt)).unwrap()
    };
    let before = states(&model);
    assert_eq!(before.len(), batch.batch * seq * h);
    model.prefix.embedding.value[5] += 0.5;
    let after = states(&model);
    for b in 0..batch.batch {
        let token = &before[(b * seq + 3) * h..][..h];
        let moved = &after[(b * seq + 3) * h..][..h];
        assert_ne!(
            token, moved,
            "sequence {b}: the first token ignores the prompt"
        );
    }
    let err = PrefixEncoder::new(
        PrefixConfig {
            method: PromptMethod::PromptTuning,
            len: 3,
            projection: false,
            hidden_size: 8,
            layers: vec![1],
        },
        32,
        3,
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--prefix-layers does not apply"), "{err}");
}

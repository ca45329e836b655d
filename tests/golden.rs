//! The engine against the PyTorch reference (tools/reference.py, and
//! tools/prompt_tuning_reference.py for prompt tuning, checked there against
//! PEFT): hidden states, pooled output, logits, loss, gradients of the prompt
//! (and its MLP) and of the head, and the parameters after one AdamW step.
//!
//! The MiniLM cases read the real model from the cache that
//! scripts/fetch-model.sh fills (or $PTUNING_MODEL_DIR).

mod common;

use common::{max_abs_diff, rel_err, Case};
use ptuning::model::prefix::PromptMethod;
use ptuning::training::adamw::{AdamW, AdamWConfig};

fn check_case(name: &str) {
    let case = Case::load(name);
    let mut model = case.model();
    let batch = case.batch();
    let layers = model.backbone.layers.len();

    // The prefix encoder's output (prompt tuning's is its plain table).
    let prefix = model.prefix.forward();
    if case.method() == PromptMethod::PTuningV2 {
        let d = max_abs_diff(&prefix.past, &case.f32("prefix.past"));
        assert!(d <= 1e-5, "{name}: prefix.past differs by {d}");
    }

    // Hidden states after the embeddings and after every layer, then the head.
    let prompt = model.prefix.expand(&prefix.past, batch.batch, None);
    let hidden = model
        .backbone
        .forward_observed(&batch, Some(&prompt), |i, h| {
            let d = max_abs_diff(h, &case.f32(&format!("hidden_states.{i}")));
            assert!(d <= 1e-4, "{name}: hidden_states.{i} differs by {d}");
        })
        .unwrap();
    let d = max_abs_diff(&hidden, &case.f32(&format!("hidden_states.{layers}")));
    assert!(d <= 1e-4, "{name}: last hidden state differs by {d}");
    if !case.per_token() {
        // Row 0 of each sequence: [CLS], or prompt tuning's first virtual token.
        let seq = hidden.len() / (batch.batch * model.head.weight.shape[1]);
        let head = model.head.forward(
            model.backbone.pooler.as_ref(),
            &hidden,
            batch.batch,
            seq,
            None,
        );
        let d = max_abs_diff(&head.pooled, &case.f32("pooled"));
        assert!(d <= 1e-4, "{name}: pooled output differs by {d}");
    }
    let logits = model.predict(&batch).unwrap();
    let d = max_abs_diff(&logits, &case.f32("logits"));
    assert!(d <= 1e-4, "{name}: logits differ by {d}");

    // Loss and gradients, dropout off.
    let out = case.step(&mut model);
    let loss = case.f32("loss")[0];
    assert!(
        (out.loss - loss).abs() <= 1e-5 * loss.abs().max(1.0),
        "{name}: loss {} vs {loss}",
        out.loss
    );
    for p in model.params_mut() {
        let e = rel_err(&p.grad, &case.f32(&format!("grad.{}", p.name)));
        assert!(
            e <= 1e-3,
            "{name}: grad of {} has relative error {e}",
            p.name
        );
    }

    // One AdamW step, from the reference's gradients so that the optimizer is
    // checked exactly: entries whose gradient is near ε would otherwise amplify
    // the (already checked) gradient differences.
    let spec = &case.spec;
    let betas = spec["betas"].as_array().unwrap();
    let config = AdamWConfig {
        lr: spec["lr"].as_f64().unwrap() as f32,
        betas: (
            betas[0].as_f64().unwrap() as f32,
            betas[1].as_f64().unwrap() as f32,
        ),
        eps: spec["eps"].as_f64().unwrap() as f32,
        weight_decay: spec["weight_decay"].as_f64().unwrap() as f32,
    };
    let lr = config.lr;
    let mut opt = AdamW::new(config);
    for p in model.params_mut() {
        p.grad = case.f32(&format!("grad.{}", p.name));
    }
    opt.step(&mut model.params_mut(), lr);
    for p in model.params_mut() {
        let d = max_abs_diff(&p.value, &case.f32(&format!("step.{}", p.name)));
        assert!(
            d <= 1e-6,
            "{name}: {} after one AdamW step differs by {d}",
            p.name
        );
    }
}

#[test]
fn tiny_bert_plain_prefix_on_every_layer() {
    check_case("tiny_bert_plain");
}

#[test]
fn tiny_bert_reparameterized_prefix_on_top_layers() {
    check_case("tiny_bert_mlp_subset");
}

#[test]
fn tiny_roberta_plain_prefix_on_the_top_layer() {
    check_case("tiny_roberta_plain_subset");
}

#[test]
fn tiny_roberta_reparameterized_prefix_on_every_layer() {
    check_case("tiny_roberta_mlp");
}

#[test]
fn minilm_plain_prefix_on_every_layer() {
    check_case("minilm_plain");
}

#[test]
fn minilm_reparameterized_prefix_on_two_layers() {
    check_case("minilm_mlp_subset");
}

#[test]
fn prompt_tuning_tiny_bert() {
    check_case("prompt_tuning_tiny_bert");
}

#[test]
fn prompt_tuning_tiny_roberta_positions_from_the_prompt() {
    check_case("prompt_tuning_tiny_roberta");
}

#[test]
fn prompt_tuning_tiny_bert_token_head_skips_the_prompt() {
    check_case("prompt_tuning_tiny_bert_tokens");
}

#[test]
fn prompt_tuning_minilm() {
    check_case("prompt_tuning_minilm");
}

/// `--prompt-init text:...` against PEFT's PromptTuningInit.TEXT on MiniLM
/// (tools/prompt_tuning_reference.py): the same token ids, special tokens
/// included, repeated (P = 16) or cut (P = 4), and the same table.
#[test]
fn prompt_tuning_text_start_is_peft_s() {
    use ptuning::model::bert::BertModel;
    use ptuning::model::prefix::{PrefixConfig, PrefixEncoder, PromptInit};
    use ptuning::model::tokenizer::Tokenizer;

    let fixture: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::fixtures().join("cases/prompt_tuning_text_init.json")).unwrap(),
    )
    .unwrap();
    let dir = common::model_dir("all-MiniLM-L6-v2");
    let (bert, tokenizer) = (
        BertModel::load(&dir).unwrap(),
        Tokenizer::from_dir(&dir).unwrap(),
    );
    let init = PromptInit::Text(fixture["text"].as_str().unwrap().to_string());
    let ids = init.text_ids(&tokenizer, bert.config.vocab_size).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let p = case["num_virtual_tokens"].as_u64().unwrap() as usize;
        let config = PrefixConfig {
            method: PromptMethod::PromptTuning,
            len: p,
            projection: false,
            hidden_size: 512,
            layers: Vec::new(),
        };
        let h = bert.config.hidden_size;
        let mut prefix = PrefixEncoder::new(config, h, bert.config.num_hidden_layers, 7).unwrap();
        prefix.init_prompt(&init, &bert.embeddings.word_embeddings, &ids, 7);
        let table = &prefix.embedding.value;
        let want: Vec<u32> = serde_json::from_value(case["token_ids"].clone()).unwrap();
        for (row, id) in table.chunks(h).zip(&want) {
            let word = &bert.embeddings.word_embeddings[*id as usize * h..][..h];
            assert_eq!(row, word, "P {p}: a row is not token {id}'s embedding");
        }
        let sum: f64 = table.iter().map(|&x| x as f64).sum();
        let want_sum = case["table_sum"].as_f64().unwrap();
        assert!(
            (sum - want_sum).abs() < 1e-9 * table.len() as f64,
            "P {p}: {sum} vs {want_sum}"
        );
        let row0: Vec<f32> = serde_json::from_value(case["table_row0"].clone()).unwrap();
        assert_eq!(&table[..8], &row0[..], "P {p}");
    }
    // Our ids are PEFT's before repetition (P = 16 holds them whole).
    let first = &fixture["cases"][0]["token_ids"];
    assert_eq!(
        serde_json::to_value(&ids).unwrap(),
        serde_json::Value::Array(first.as_array().unwrap()[..ids.len()].to_vec())
    );
}

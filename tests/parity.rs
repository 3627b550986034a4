//! Parity of the candle BERT encoder with Python sentence-transformers, on the real all-MiniLM-L6-v2 weights.

mod common;

use chatspace_mpi::model::{Backend, BertBackend, ModelSpec, Pooling};
use chatspace_mpi::protocol::TokenBatch;
use common::*;

fn batch(tok: &tokenizers::Tokenizer, texts: &[&str], first_id: u64) -> TokenBatch {
    let enc = tok.encode_batch(texts.to_vec(), true).unwrap();
    let mut b = TokenBatch { row_ids: vec![], lengths: vec![], ids: vec![] };
    for (i, e) in enc.iter().enumerate() {
        b.row_ids.push(first_id + i as u64);
        b.lengths.push(e.get_ids().len() as u32);
        b.ids.extend_from_slice(e.get_ids());
    }
    b
}

#[test]
fn minilm_matches_sentence_transformers_reference() {
    let spec = ModelSpec::load(&model(), None).unwrap();
    assert_eq!((spec.pooling, spec.normalize, spec.max_seq_length, spec.dim), (Pooling::Mean, true, 256, 384));
    let tok = spec.tokenizer().unwrap();
    let mut backend = BertBackend::load(&spec).unwrap();
    let refs = reference();
    let texts: Vec<&str> = refs.iter().map(|r| r["text"].as_str().unwrap()).collect();

    // Token ids, truncation at 256 included, are the reference's.
    for (r, t) in refs.iter().zip(&texts) {
        let want: Vec<u32> = r["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(*t, true).unwrap().get_ids(), &want[..], "token ids of {t:?}");
    }

    // Mixed-length batches of 7: every embedding within the tolerance.
    let mut worst = (1.0f64, 0.0f32);
    for (k, group) in texts.chunks(7).enumerate() {
        let b = batch(&tok, group, (k * 7) as u64);
        let out = backend.embed(&b).unwrap();
        for (i, v) in out.chunks(384).enumerate() {
            let r = &refs[k * 7 + i];
            let want: Vec<f32> = r["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            let (c, d) = (cosine(v, &want), max_abs_diff(v, &want));
            worst = (worst.0.min(c), worst.1.max(d));
            assert!(c >= 0.99999 && d <= 1e-4, "text {:?}: cosine {c}, max abs diff {d}", r["text"]);
        }
    }
    eprintln!("parity: worst cosine {:.9}, worst max abs diff {:.2e}", worst.0, worst.1);
}

#[test]
fn embedding_does_not_depend_on_batch_composition() {
    let spec = ModelSpec::load(&model(), None).unwrap();
    let tok = spec.tokenizer().unwrap();
    let mut backend = BertBackend::load(&spec).unwrap();
    let refs = reference();
    let texts: Vec<&str> = refs.iter().take(24).map(|r| r["text"].as_str().unwrap()).collect();
    let together = backend.embed(&batch(&tok, &texts, 0)).unwrap();
    for (i, t) in texts.iter().enumerate() {
        let alone = backend.embed(&batch(&tok, &[t], 0)).unwrap();
        let d = max_abs_diff(&alone, &together[i * 384..(i + 1) * 384]);
        assert!(d <= 1e-5, "text {t:?} differs by {d} alone vs. in a padded batch");
    }
}

/// Qwen3-Embedding layout (tiny random weights): left padding, appended <|endoftext|>, last-token pooling,
/// Normalize, and the `query` prompt, against sentence-transformers.
#[test]
fn tiny_qwen3_matches_sentence_transformers_for_documents_and_queries() {
    let folder = root().join("tests/fixtures/tiny-qwen3-embedding");
    let spec = ModelSpec::load(&folder, None).unwrap();
    assert_eq!((spec.pooling, spec.normalize, spec.dim), (Pooling::LastToken, true, 64));
    let tok = spec.tokenizer().unwrap();
    let mut backend = spec.backend().unwrap();
    let refs: Vec<serde_json::Value> = std::fs::read_to_string(root().join("tests/fixtures/tiny-qwen3-embedding-reference.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (mut docs, mut queries, mut worst) = (0, 0, 1.0f64);
    for group in refs.chunks(5) {
        let texts: Vec<String> = group
            .iter()
            .map(|r| {
                let prompt = spec.resolve_prompt(None, r["prompt_name"].as_str()).unwrap();
                format!("{prompt}{}", r["text"].as_str().unwrap())
            })
            .collect();
        let b = batch(&tok, &texts.iter().map(String::as_str).collect::<Vec<_>>(), 0);
        let out = backend.embed(&b).unwrap();
        let mut at = 0;
        for (i, r) in group.iter().enumerate() {
            let n = b.lengths[i] as usize;
            if let Some(ids) = r["input_ids"].as_array() {
                let want: Vec<u32> = ids.iter().map(|v| v.as_u64().unwrap() as u32).collect();
                assert_eq!(&b.ids[at..at + n], &want[..], "token ids of {:?}", r["text"]);
            }
            at += n;
            let want: Vec<f32> = r["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            let c = cosine(&out[i * 64..(i + 1) * 64], &want);
            worst = worst.min(c);
            assert!(c >= 0.99999, "{:?} (prompt {:?}): cosine {c}", r["text"], r["prompt_name"]);
            if r["prompt_name"].is_null() { docs += 1 } else { queries += 1 }
        }
    }
    assert_eq!((docs, queries), (64, 16));
    eprintln!("qwen3 parity: worst cosine {worst:.9}");
}

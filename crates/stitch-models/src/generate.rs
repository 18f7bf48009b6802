//! The generation loop and samplers.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stitch_core::{Error, Result};

use crate::llama::Llama;
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Sampling settings. Temperature 0 is greedy.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// Softmax temperature; 0 picks the most likely token.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = all).
    pub top_p: f32,
    /// Divide positive (multiply negative) logits of already-seen tokens by this (1 = off).
    pub repeat_penalty: f32,
    /// Seed of the sampler's random numbers.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            repeat_penalty: 1.0,
            seed: 42,
        }
    }
}

/// Picks the next token from `logits`.
#[derive(Debug)]
pub struct Sampler {
    cfg: Sampling,
    rng: ChaCha8Rng,
    order: Vec<usize>,
}

impl Sampler {
    /// A sampler with these settings.
    pub fn new(cfg: Sampling) -> Result<Sampler> {
        let ok = cfg.temperature >= 0.0 && cfg.top_p > 0.0 && cfg.top_p <= 1.0 && cfg.repeat_penalty > 0.0;
        if !ok {
            return Err(Error::invalid(format!(
                "sampling settings out of range: temperature {} (>= 0), top-p {} (0 < p <= 1), repeat penalty {} (> 0)",
                cfg.temperature, cfg.top_p, cfg.repeat_penalty
            )));
        }
        Ok(Sampler {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            cfg,
            order: Vec::new(),
        })
    }

    /// The next token; `history` are the tokens seen so far (for the repeat penalty).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        if self.cfg.repeat_penalty != 1.0 {
            for &t in history {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / self.cfg.repeat_penalty
                    } else {
                        *l * self.cfg.repeat_penalty
                    };
                }
            }
        }
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .fold(
                    (0usize, f32::NEG_INFINITY),
                    |a, (i, &v)| if v > a.1 { (i, v) } else { a },
                )
                .0 as u32
        };
        if self.cfg.temperature == 0.0 {
            return argmax();
        }
        self.order.clear();
        self.order.extend(0..logits.len());
        let k = if self.cfg.top_k == 0 {
            logits.len()
        } else {
            self.cfg.top_k.min(logits.len())
        };
        self.order.select_nth_unstable_by(k - 1, |&a, &b| {
            logits[b].partial_cmp(&logits[a]).unwrap_or(std::cmp::Ordering::Equal)
        });
        self.order.truncate(k);
        self.order
            .sort_unstable_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap_or(std::cmp::Ordering::Equal));
        let max = logits[self.order[0]];
        let mut probs: Vec<f32> = self
            .order
            .iter()
            .map(|&i| ((logits[i] - max) / self.cfg.temperature).exp())
            .collect();
        let sum: f32 = probs.iter().sum();
        let mut keep = probs.len();
        let mut acc = 0.0;
        for (i, p) in probs.iter_mut().enumerate() {
            *p /= sum;
            acc += *p;
            if acc >= self.cfg.top_p {
                keep = i + 1;
                break;
            }
        }
        let total: f32 = probs[..keep].iter().sum();
        let mut u = self.rng.gen::<f32>() * total;
        for (i, &p) in probs[..keep].iter().enumerate() {
            if u < p {
                return self.order[i] as u32;
            }
            u -= p;
        }
        self.order[keep - 1] as u32
    }
}

/// What a generation produced.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The generated text.
    pub text: String,
    /// Prompt token ids.
    pub prompt_ids: Vec<u32>,
    /// Generated token ids (the end-of-generation token included when it ended the text).
    pub ids: Vec<u32>,
    /// Time to process the prompt.
    pub prefill: Duration,
    /// Time to generate the tokens after the first.
    pub decode: Duration,
}

impl Generation {
    /// Prompt tokens per second.
    pub fn prefill_tps(&self) -> f64 {
        self.prompt_ids.len() as f64 / self.prefill.as_secs_f64().max(1e-9)
    }
    /// Generated tokens per second (each decode step is one forward of one token).
    pub fn decode_tps(&self) -> f64 {
        let steps = self.ids.len().saturating_sub(1);
        steps as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// Generates up to `max_tokens` after `prompt_ids` (appended to what the model
/// already holds), calling `on_text` with each complete piece of text.
pub fn generate(
    model: &mut Llama,
    tok: &Tokenizer,
    prompt_ids: &[u32],
    max_tokens: usize,
    ignore_eos: bool,
    sampler: &mut Sampler,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    let t0 = Instant::now();
    let mut logits = model.forward(prompt_ids)?;
    let prefill = t0.elapsed();
    let mut history: Vec<u32> = prompt_ids.to_vec();
    let mut ids = Vec::new();
    let mut text = String::new();
    let mut stream = StreamDecoder::new();
    let t1 = Instant::now();
    for i in 0..max_tokens {
        let next = sampler.sample(&mut logits, &history);
        ids.push(next);
        history.push(next);
        if !ignore_eos && tok.eog_ids().contains(&next) {
            break;
        }
        if let Some(piece) = stream.push(tok, next)? {
            on_text(&piece);
            text.push_str(&piece);
        }
        if i + 1 < max_tokens {
            logits = model.forward(&[next])?;
        }
    }
    Ok(Generation {
        text,
        prompt_ids: prompt_ids.to_vec(),
        ids,
        prefill,
        decode: t1.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_maximum_and_sampling_respects_top_k() {
        let mut s = Sampler::new(Sampling {
            temperature: 0.0,
            repeat_penalty: 1.0,
            ..Default::default()
        })
        .unwrap();
        let mut l = vec![0.1, 3.0, -1.0, 2.9];
        assert_eq!(s.sample(&mut l, &[]), 1);
        // Repeat penalty: token 1 seen → 3.0 / 2 = 1.5 < 2.9.
        let mut s = Sampler::new(Sampling {
            temperature: 0.0,
            repeat_penalty: 2.0,
            ..Default::default()
        })
        .unwrap();
        let mut l = vec![0.1, 3.0, -1.0, 2.9];
        assert_eq!(s.sample(&mut l, &[1]), 3);
        // top-k 2 never picks outside the two largest; seeded, so repeatable.
        let mut s = Sampler::new(Sampling {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            repeat_penalty: 1.0,
            seed: 7,
        })
        .unwrap();
        let mut seen = [0usize; 4];
        for _ in 0..500 {
            let mut l = vec![0.5, 1.0, -1.0, 0.9];
            seen[s.sample(&mut l, &[]) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[2], 0, "{seen:?}");
        assert!(seen[1] > seen[3] && seen[3] > 100, "{seen:?}");
        assert!(Sampler::new(Sampling {
            top_p: 0.0,
            ..Default::default()
        })
        .is_err());
    }
}

//! A text bundle's tokenization: UTF-8 texts to the core's inputs, as the manifest's
//! `preprocessing.text` says, with the Hugging Face `tokenizers` crate (pure Rust, loaded from
//! the bundle's own tokenizer file; nothing is downloaded).
//!
//! The tensors it returns own their bytes and are zeroized when dropped (G4). What the
//! `tokenizers` crate allocates while it encodes (normalized strings, tokens, offsets) is freed
//! without being zeroized, like ONNX Runtime's arena: outside G4.

use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};
use zeroize::Zeroizing;

use crate::bundle::tensor::{DType, Tensor};
use crate::bundle::{sha256_bytes, Bundle, EncodingField, Padding, TextSpec};
use crate::error::{Error, Result};

/// The tokenizer of a text bundle, configured by its manifest.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    spec: TextSpec,
    /// The core inputs it fills: (name, element type, encoding field), in manifest order.
    inputs: Vec<(String, DType, EncodingField)>,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl TextEncoder {
    /// Loads the tokenizer file of `bundle` (checking its sha256 on the bytes it parses), or
    /// `None` when the bundle does not take text.
    pub fn open(bundle: &Bundle) -> Result<Option<TextEncoder>> {
        let Some(spec) = bundle.manifest.preprocessing.text() else {
            return Ok(None);
        };
        let path = bundle.dir.join(&spec.tokenizer);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        bundle.check_tokenizer_sha256(&path, &sha256_bytes(&bytes))?;
        let bad = |message: String| Error::Manifest {
            path: path.clone(),
            field: "preprocessing.text.tokenizer".into(),
            message,
        };
        let mut tokenizer = Tokenizer::from_bytes(&bytes)
            .map_err(|e| bad(format!("not a tokenizers JSON file: {e}")))?;
        let pad_token = tokenizer
            .id_to_token(spec.pad_id)
            .ok_or_else(|| Error::Manifest {
                path: path.clone(),
                field: "preprocessing.text.pad_id".into(),
                message: format!("{} is not a token id of the tokenizer", spec.pad_id),
            })?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: spec.max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| bad(format!("truncation to {}: {e}", spec.max_length)))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: match spec.padding {
                Padding::Longest => PaddingStrategy::BatchLongest,
                Padding::MaxLength => PaddingStrategy::Fixed(spec.max_length),
            },
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: spec.pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        let inputs = bundle
            .manifest
            .inputs
            .iter()
            .map(|i| (i.name.clone(), i.dtype(), spec.inputs[&i.name]))
            .collect();
        Ok(Some(TextEncoder {
            tokenizer,
            spec: spec.clone(),
            inputs,
        }))
    }

    /// The core's inputs for `texts`: one batch, padded as the manifest says (`[n, L]`).
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Tensor<'static>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), self.spec.add_special_tokens)
            .map_err(|e| Error::InvalidInput(format!("tokenizing the texts failed: {e}")))?;
        let n = encodings.len();
        let len = encodings.first().map_or(0, |e| e.len());
        if let Some(e) = encodings.iter().find(|e| e.len() != len) {
            return Err(Error::InvalidInput(format!(
                "the tokenizer padded texts to {} and {len} tokens",
                e.len()
            )));
        }
        Ok(self
            .inputs
            .iter()
            .map(|(name, dtype, field)| {
                let mut bytes = Zeroizing::new(Vec::with_capacity(n * len * dtype.size()));
                for e in &encodings {
                    let values = match field {
                        EncodingField::Ids => e.get_ids(),
                        EncodingField::AttentionMask => e.get_attention_mask(),
                        EncodingField::TypeIds => e.get_type_ids(),
                    };
                    for &v in values {
                        match dtype {
                            DType::Int32 => bytes.extend_from_slice(&(v as i32).to_ne_bytes()),
                            _ => bytes.extend_from_slice(&i64::from(v).to_ne_bytes()),
                        }
                    }
                }
                Tensor::owned(name.clone(), *dtype, &[n, len], std::mem::take(&mut *bytes))
            })
            .collect())
    }

    /// The token ids of each text, without padding (as a text alone would have them).
    pub fn token_ids(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .map(|t| {
                let e = self
                    .tokenizer
                    .encode(*t, self.spec.add_special_tokens)
                    .map_err(|e| Error::InvalidInput(format!("tokenizing a text failed: {e}")))?;
                Ok(e.get_ids()
                    .iter()
                    .zip(e.get_attention_mask())
                    .filter(|(_, &m)| m == 1)
                    .map(|(&id, _)| id)
                    .collect())
            })
            .collect()
    }
}

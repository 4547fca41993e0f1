//! Building blocks shared by the networks.
pub mod conv;
pub mod norm;
pub mod ops;
pub mod spade;
pub mod spectral;

use candle_core::Tensor;
use std::cell::Cell;

thread_local! {
    static PARAM_GRADS_OFF: Cell<bool> = const { Cell::new(false) };
}

/// While the returned guard lives, the layers on this thread use their parameters detached:
/// the forward builds no graph towards them, so a backward computes no gradients for them
/// (what `torch.no_grad()` or `requires_grad_(False)` saves). Gradients with respect to the
/// inputs still flow. The trainer runs the discriminator of the generator step and the
/// generator of the discriminator step this way; values are unchanged.
pub fn no_param_grads() -> NoParamGrads {
    NoParamGrads(PARAM_GRADS_OFF.with(|f| f.replace(true)))
}

/// Guard of [`no_param_grads`]; restores the previous state when dropped.
pub struct NoParamGrads(bool);

impl Drop for NoParamGrads {
    fn drop(&mut self) {
        PARAM_GRADS_OFF.with(|f| f.set(self.0));
    }
}

/// A parameter as a layer's forward uses it: detached inside [`no_param_grads`].
pub(crate) fn param(t: &Tensor) -> Tensor {
    if PARAM_GRADS_OFF.with(|f| f.get()) {
        t.detach()
    } else {
        t.clone()
    }
}

#[cfg(test)]
mod tests;

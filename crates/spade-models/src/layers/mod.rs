//! Building blocks shared by the networks.
pub mod conv;
pub mod norm;
pub mod ops;
pub mod spade;
pub mod spectral;

#[cfg(test)]
mod tests;

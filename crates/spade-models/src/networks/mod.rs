//! The networks of the paper and the reference code.
pub mod crn;
pub mod discriminator;
pub mod encoder;
pub mod generator;
pub mod pix2pixhd;
pub mod variants;

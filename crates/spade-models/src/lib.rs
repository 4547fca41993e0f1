//! SPADE networks, layers and losses on candle, with weights named exactly as the reference
//! PyTorch state_dict keys so that its checkpoints load without renaming.
pub mod checkpoint;
pub mod error;
pub mod layers;
pub mod loss;
pub mod networks;
pub mod options;
pub mod semantics;
pub mod store;

pub use error::{Error, Result};
pub use networks::discriminator::MultiscaleDiscriminator;
pub use networks::encoder::ConvEncoder;
pub use networks::generator::SpadeGenerator;
pub use networks::pix2pixhd::Pix2PixHDGenerator;
pub use options::NetOptions;
pub use semantics::SemanticsSpec;
pub use store::{ParamStore, Vb};

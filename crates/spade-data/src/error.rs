//! Errors of the data crate. Every message names the file, the offending value and what was
//! expected, so that one line on stderr is enough to fix a dataset.
use std::fmt;
use std::path::PathBuf;

/// Which member of a (label, image, instance) triple a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Label,
    Image,
    Instance,
    /// A palette / classes.json file.
    Palette,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Label => "label",
            FileKind::Image => "image",
            FileKind::Instance => "instance",
            FileKind::Palette => "palette",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A directory that the layout requires is absent.
    #[error("{}: missing directory: expected {expected}", path.display())]
    MissingDir { path: PathBuf, expected: String },

    /// A file has no partner of the given kind (e.g. a label without its image).
    #[error("{}: missing {kind} partner: expected {expected}", path.display())]
    MissingPartner { path: PathBuf, kind: FileKind, expected: String },

    /// The file cannot be opened or read at all.
    #[error("{}: cannot read {kind} file: {source}", path.display())]
    Io { path: PathBuf, kind: FileKind, source: std::io::Error },

    /// An image larger than the pixel cap (`pngio::max_image_pixels`), refused from its header.
    #[error(
        "{}: {kind} file of {width}x{height} pixels is larger than the limit of {max} pixels; \
         raise it with SPADE_MAX_IMAGE_PIXELS=N if the file is genuine",
        path.display()
    )]
    TooLarge { path: PathBuf, kind: FileKind, width: u64, height: u64, max: u64 },

    /// The file is present but its content cannot be decoded.
    #[error("{}: unreadable or corrupt {kind} file: {detail}", path.display())]
    Corrupt { path: PathBuf, kind: FileKind, detail: String },

    /// A PNG colour type / depth that cannot hold ids for this kind of file.
    #[error("{}: unsupported {kind} PNG format {format}: expected {expected}", path.display())]
    Unsupported { path: PathBuf, kind: FileKind, format: String, expected: String },

    /// A (raw) label value that is neither a valid class id nor the don't-care value.
    #[error(
        "{}: label value {value} is outside the valid range {valid} ({pixels} pixels with invalid values {values:?})",
        path.display()
    )]
    LabelOutOfRange { path: PathBuf, value: u32, valid: String, pixels: usize, values: Vec<u32> },

    /// A colour-coded label pixel whose colour is not in the palette.
    #[error(
        "{}: colour ({}, {}, {}) at pixel (x {x}, y {y}) is not in the palette ({count} known colours)",
        path.display(), rgb[0], rgb[1], rgb[2]
    )]
    UnknownColour { path: PathBuf, rgb: [u8; 3], x: usize, y: usize, count: usize },

    /// Partner files of one pair do not have the same size.
    #[error(
        "{}: {kind} size {width}x{height} differs from the label size {label_width}x{label_height} of {}",
        path.display(), label.display()
    )]
    SizeMismatch {
        path: PathBuf,
        kind: FileKind,
        width: usize,
        height: usize,
        label: PathBuf,
        label_width: usize,
        label_height: usize,
    },

    /// A dataset root that holds no pairs.
    #[error("{}: no {kind} files found: expected {expected}", path.display())]
    Empty { path: PathBuf, kind: FileKind, expected: String },

    /// An option value that cannot work.
    #[error("invalid dataset option {option} = {value}: expected {expected}")]
    Config { option: &'static str, value: String, expected: String },

    /// Writing an output file failed.
    #[error("{}: cannot write: {detail}", path.display())]
    Write { path: PathBuf, detail: String },
}

impl DataError {
    /// The file the problem is about, when there is one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            DataError::MissingDir { path, .. }
            | DataError::MissingPartner { path, .. }
            | DataError::Io { path, .. }
            | DataError::Corrupt { path, .. }
            | DataError::TooLarge { path, .. }
            | DataError::Unsupported { path, .. }
            | DataError::LabelOutOfRange { path, .. }
            | DataError::UnknownColour { path, .. }
            | DataError::SizeMismatch { path, .. }
            | DataError::Empty { path, .. }
            | DataError::Write { path, .. } => Some(path),
            DataError::Config { .. } => None,
        }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

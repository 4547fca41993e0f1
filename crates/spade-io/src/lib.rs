//! File formats used across the workspace: PyTorch `.pth` checkpoints (zip and legacy),
//! safetensors, npy/npz, and atomic writes.

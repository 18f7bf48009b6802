//! Reading and writing `.npy` and `.npz` files.

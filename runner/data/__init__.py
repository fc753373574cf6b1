"""Data: files on disk to uint8 tensors on the device, and batches of them."""

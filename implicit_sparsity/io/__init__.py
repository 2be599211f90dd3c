"""The ground floor of files: crash-consistent writes, safe loads, folder locks, and the run
folder's file formats. Every other package writes its files through here."""

from implicit_sparsity.io.files import (
                                        FolderLock,
                                        atomic_torch_save,
                                        atomic_write_bytes,
                                        atomic_write_text,
                                        load_tensors,
)

__all__ = ["FolderLock", "atomic_torch_save", "atomic_write_bytes", "atomic_write_text",
           "load_tensors"]

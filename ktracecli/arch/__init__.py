"""Architecture support: instruction decoding, relocation and encoding (x86_64 only for now)."""

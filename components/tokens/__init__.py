"""Tokenizers, packing into blocks, NSP pairs."""

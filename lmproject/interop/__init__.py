"""Other tools' formats: Hugging Face Llama folders (hf_llama)."""

"""Sampling text from a TransformerLM: the settings (config), the generation loop (generate), the KV cache
(kv_cache) and the faster decode steps (compiled_step on the CPU, cuda_graph on the GPU)."""

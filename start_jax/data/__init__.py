"""Task data sets: the tfds builder of JSONL task files, the loading and prompt
pipeline, and chat prompts. The embedded world's data sets are `start_jax.world`.

`start_jax.data.pipeline` (which imports tensorflow_datasets) is loaded only
when imported.
"""

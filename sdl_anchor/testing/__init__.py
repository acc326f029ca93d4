"""Test helpers users can reuse in their own tests, all offline and small:

* :mod:`sdl_anchor.testing.toy_lm`: a tiny TransformerLens model with a word-level tokenizer
  (``toy_language_model``, ``tokenized_dataset``, ``word_level_tokenizer``);
* :mod:`sdl_anchor.testing.planted`: a model whose words carry known first-letter directions and SAEs of
  known absorption (``planted_letter_model``, ``planted_letter_sae``);
* :mod:`sdl_anchor.testing.hub_cache`: an offline Hugging Face hub cache with a tiny ``gpt2`` and an SAE of
  the ``gpt2-small-res-jb`` release, so ``HookedTransformer.from_pretrained("gpt2")`` and
  ``SAE.from_pretrained(release, id)`` run unchanged without a network (``offline_hub``).

None of them imports SAELens or TransformerLens until it is called.
"""

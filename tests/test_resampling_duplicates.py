"""Merging duplicated latents (the theory strategy's step 0): planted copies of known features, a planted
pair that shares a direction but never fires together, the freed latents' use and parking, bad input."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from sae_lens.registry import get_sae_training_class

import sdl_anchor as sa
from sdl_anchor.eval.resampling_experiments import plant_spurious_minimum
from sdl_anchor.integrations.resampling_trainer import pool_loss, pool_statistics
from sdl_anchor.resampling import ResamplingConfig, theory_resample
from sdl_anchor.resampling.duplicates import FiringStats, duplicate_pairs, merge_duplicates, parked_weights

N_COPIED, COPIES = 16, 3  # features 0..15 are written by three noisy copies each
SHARED = (48, 49)  # two latents, one decoder direction, disjoint features: not copies


@pytest.fixture(scope="module")
def bench():
    return sa.LinearRepresentationBench(n_features=32, d_in=64, sparsity=0.97, max_interference=0.1, seed=0)


def planted_copies(bench):
    """Latents ``i + 16 c`` (c < 3) are noisy copies (cosine ~0.9) of feature ``i < 16``, each carrying a
    third of its coefficient; latents 48..63 write features 16..31 alone, except that 48 and 49 share the
    decoder direction of features 16 + 17; latents 64.. are dead."""
    sae_class, config_class = get_sae_training_class("topk")
    torch.manual_seed(0)
    sae = sae_class(config_class(d_in=64, d_sae=128, k=64, aux_loss_coefficient=0.0))  # never binds
    features = bench.features_in
    # the copies' noise: orthonormal directions outside the features' span, one per copy (copies of a
    # feature have cosine 0.81 with each other; their mean, 0.96 with the feature)
    noise = torch.linalg.svd(features.T).U[:, -COPIES:].T
    with torch.no_grad():
        sae.b_enc[:64] = -0.05  # no latent fires on interference alone
        sae.b_enc[64:] = -10.0
        for copy in range(COPIES):
            directions = 0.9 * features[:N_COPIED] + 0.436 * noise[copy]
            latents = torch.arange(N_COPIED) + N_COPIED * copy
            sae.W_dec[latents] = directions
            sae.W_enc[:, latents] = features[:N_COPIED].T / COPIES
        sae.W_dec[48:64] = features[16:32]
        sae.W_enc[:, 48:64] = features[16:32].T
        sae.W_dec[list(SHARED)] = F.normalize(features[16] + features[17], dim=0)
    return sae


def merged_copies(sae, pool, firing, cofiring):
    weights = sae.W_enc.detach(), sae.b_enc.detach(), sae.W_dec.detach()
    scaled = sae.cfg.rescale_acts_by_decoder_norm
    return merge_duplicates(firing, *weights, cofiring, pool.encoder_inputs, scaled)


def pool_with_firing(sae, bench, cosine=0.7):
    batch = bench.sample(8192, torch.Generator().manual_seed(1))
    eligible = torch.ones(128, dtype=torch.bool)
    eligible[64:] = False
    firing = FiringStats(duplicate_pairs(sae.W_dec.detach(), eligible, cosine), 128, sae.W_dec)
    pool = pool_statistics(sae, batch.x_in, batch.x_in, firing=firing)
    return batch, pool, firing


def test_pairs_are_the_latents_whose_decoders_are_that_close(bench):
    sae = planted_copies(bench)
    eligible = torch.ones(128, dtype=torch.bool)
    eligible[64:] = False
    eligible[0] = False
    pairs = {tuple(p) for p in duplicate_pairs(sae.W_dec.detach(), eligible, 0.7).tolist()}
    expected = {(i + 16 * a, i + 16 * b) for i in range(N_COPIED) for a in range(3) for b in range(a + 1, 3)}
    expected = {p for p in expected if 0 not in p} | {SHARED}
    assert pairs == expected


def test_each_features_copies_merge_into_one_latent_that_writes_it(bench):
    sae = planted_copies(bench)
    batch, pool, firing = pool_with_firing(sae, bench)
    merge = merged_copies(sae, pool, firing, 0.5)
    groups = {int(k) % N_COPIED for k in merge.keepers}
    assert groups == set(range(N_COPIED)) and merge.keepers.numel() == N_COPIED  # 48 and 49 stay apart
    assert sorted(merge.freed.tolist() + merge.keepers.tolist()) == list(range(48))
    rewritten = zip(merge.keepers, merge.encoder.T, merge.encoder_bias, merge.decoder, strict=True)
    for keeper, encoder, bias, decoder in rewritten:
        members = torch.arange(COPIES) * N_COPIED + int(keeper) % N_COPIED
        assert int(keeper) == int(members[firing.activation_sums[members].argmax()])
        torch.testing.assert_close(encoder, sae.W_enc[:, members].sum(1))  # the group's whole coefficient
        torch.testing.assert_close(bias, sae.b_enc[members].sum())
        weights = firing.activation_sums[members]
        torch.testing.assert_close(decoder, (weights[:, None] * sae.W_dec[members]).sum(0) / weights.sum())
    feature = bench.features_in[merge.keepers % N_COPIED]
    merged_cos = F.cosine_similarity(merge.decoder, feature, dim=1)
    copies_cos = F.cosine_similarity(sae.W_dec[:48].detach(), bench.features_in[torch.arange(48) % 16], dim=1)
    assert merged_cos.min() > 0.95 > copies_cos.max()  # the mean of the copies points at the feature
    before = pool_loss(sae, batch.x_in, batch.x_in)
    with torch.no_grad():
        sae.W_enc[:, merge.keepers] = merge.encoder
        sae.b_enc[merge.keepers] = merge.encoder_bias
        sae.W_dec[merge.keepers] = merge.decoder
        largest = float(batch.x_in.norm(dim=1).max())
        encoder, bias, decoder = parked_weights(merge.freed, sae.W_enc, sae.W_dec, largest)
        sae.W_enc[:, merge.freed], sae.b_enc[merge.freed], sae.W_dec[merge.freed] = encoder, bias, decoder
    # the merged latent reconstructs what the copies did together
    assert pool_loss(sae, batch.x_in, batch.x_in) == pytest.approx(before, rel=1e-3)
    assert not (sae.encode(batch.x_in)[:, merge.freed] > 0).any()  # parked latents are silent ...
    claims = F.normalize(torch.cat([encoder.T, decoder]), dim=1) @ bench.features_in.T
    assert claims.abs().max() < 0.6  # ... and point at no feature


def test_copies_that_do_not_fire_together_do_not_merge(bench):
    sae = planted_copies(bench)
    _, pool, firing = pool_with_firing(sae, bench)
    merged = merged_copies(sae, pool, firing, 0.5)
    assert not set(SHARED) & set(merged.keepers.tolist() + merged.freed.tolist())
    assert merged_copies(sae, pool, firing, 1.0).keepers.numel() <= merged.keepers.numel()


def test_a_merged_latent_never_fires_for_more_than_its_group_did():
    # two copies along u whose summed pre-activation is 2 on every input, though together they fired 0.2
    u = F.normalize(torch.ones(4), dim=0)
    stats = FiringStats(torch.tensor([[0, 1]]), 2, u)
    stats.add(torch.full((10, 2), 0.01))
    inputs = u.repeat(10, 1)
    merged = merge_duplicates(stats, torch.stack([u, u], 1), torch.zeros(2), torch.stack([u, u]), 0.5, inputs)
    assert (inputs @ merged.encoder + merged.encoder_bias).sum() == pytest.approx(0.2)


def test_theory_splits_into_spare_latents_after_dead_ones_and_leaves_protected_alone():
    bench = sa.LinearRepresentationBench(n_features=64, d_in=64, sparsity=0.98, max_interference=0.1, seed=0)
    sae_class, config_class = get_sae_training_class("topk")
    torch.manual_seed(0)
    sae = sae_class(config_class(d_in=64, d_sae=64, k=2, aux_loss_coefficient=0.0))
    plant_spurious_minimum(sae, bench.features_in)  # latents 0..31 polysemantic, 32..63 dead
    batch = bench.sample(8192, torch.Generator().manual_seed(1))
    pool = pool_statistics(sae, batch.x_in, batch.x_in)
    dead, spare, protected = torch.arange(32, 48), torch.arange(48, 64), torch.arange(4)
    weights = sae.W_enc.detach(), sae.b_enc.detach(), sae.W_dec.detach()
    update = theory_resample(dead, pool, *weights, spare=spare, protected=protected)
    written = update.latents.tolist()
    assert len(written) == len(set(written))
    assert not set(range(4)) & set(written)  # protected latents are not split
    assert update.n_split == 28 and update.n_fallback == 0
    assert set(range(32, 48)) <= set(written)  # dead latents first ...
    assert len(set(range(48, 64)) & set(written)) == 12  # ... then 12 of the spare ones, the rest left out


def test_the_trainer_merges_copies_and_parks_what_splits_do_not_take(bench):
    results = {}
    for cosine in (None, 0.7):
        sae = planted_copies(bench)
        config = ResamplingConfig(every_n_steps=20, max_events=2, pool_size=4096, duplicate_cosine=cosine)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sa.train_on_bench(
                sae, bench, n_steps=100, batch_size=256, lr=1e-4, resampling=config, show_progress=False
            )
        results[cosine] = sa.recovery(sae, bench, mcc=False), sae.cfg.metadata.resampling["events"]
    merged, (first, second) = results[0.7]
    assert first["resample/merged"] == N_COPIED * (COPIES - 1)
    # dead and freed latents that no split took are parked, none given the fallback
    assert first["resample/parked"] == 64 + first["resample/merged"] - first["resample/latents"]
    assert first["resample/fallback"] == 0 and second["resample/fallback"] == 0
    assert second["resample/dead_before"] < first["resample/parked"]  # parked latents are not dead
    assert "resample/merged" not in results[None][1][0]
    # the copied features found; without the merge, their latents stay at cosine 0.9
    assert merged["M_GT_dec"] > 0.95 > results[None][0]["M_GT_dec"]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"strategy": "anthropic", "duplicate_cosine": 0.8}, "theory strategy's step 0"),
        ({"duplicate_cosine": 1.0}, "duplicate_cosine must be in"),
        ({"duplicate_cosine": "0.8"}, "duplicate_cosine must be in"),
        ({"duplicate_cofiring": 0.0}, "duplicate_cofiring must be in"),
    ],
)
def test_bad_duplicate_settings_say_what_to_fix(settings, message):
    with pytest.raises(ValueError, match=message):
        ResamplingConfig(**settings)


def test_firing_stats_over_chunks_match_counting_the_dense_activations():
    torch.manual_seed(0)
    chunks = [torch.randn(n, 40).clamp_min(0.8) - 0.8 for n in (7, 30, 1)]  # zeros and rare positives
    for chunk in chunks:
        chunk[:, 5] = -1.0  # a negative activation is not a firing
    pairs = torch.tensor([[0, 1], [1, 2], [0, 39], [5, 6], [3, 38]])
    stats = FiringStats(pairs, 40, chunks[0])
    for chunk in chunks:
        stats.add(chunk)
    acts = torch.cat(chunks)
    fired = acts > 0
    assert torch.equal(stats.fire_counts, fired.sum(0))
    assert torch.allclose(stats.activation_sums, acts.clamp_min(0).sum(0))
    assert torch.equal(stats.both_fire, (fired[:, pairs[:, 0]] & fired[:, pairs[:, 1]]).sum(0))
    assert stats.both_fire[3] == 0 and stats.both_fire[:3].sum() > 0

    no_pairs = FiringStats(torch.zeros(0, 2, dtype=torch.long), 40, acts)
    no_pairs.add(acts)
    assert torch.equal(no_pairs.fire_counts, fired.sum(0)) and no_pairs.both_fire.numel() == 0


def test_pairs_from_the_upper_triangle_blocks_are_those_of_the_full_similarity_matrix():
    torch.manual_seed(1)
    W_dec = torch.randn(50, 3)  # in three dimensions many rows are close
    eligible = torch.rand(50) > 0.2
    units = F.normalize(W_dec, dim=1)
    similarity = units @ units.T
    expected = {
        (i, j) for i in range(50) for j in range(i + 1, 50)
        if eligible[i] and eligible[j] and similarity[i, j] > 0.9
    }  # fmt: skip
    for block in (4, 7, 64):
        assert {tuple(p) for p in duplicate_pairs(W_dec, eligible, 0.9, block=block).tolist()} == expected

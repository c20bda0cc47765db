"""A real learning test: a tiny model learns 2-digit addition, including held-out problems."""

from validation.arith import optim, sweep, task, train


def test_tiny_model_learns_two_digit_addition():
    """1,000 of the 10,000 problems are held out, so passing needs generalisation, not recall.

    Which seed gets there within 2,000 steps depends on the machine's float rounding (measured with this
    recipe on an Intel Xeon: seeds 0 and 2 reach held-out loss 0.026 and 0.067, seed 1 is still at 0.53;
    the earlier 1-digit test, 9 held-out problems, generalised with seed 0 on an AMD EPYC and memorised
    with it on the Xeon, held-out loss 0.78). So
    every seed tried must learn, and one of up to three seeds must generalise; a broken model,
    optimiser or task fails all three.
    """
    tc = task.TaskConfig(n_digits=2, held_out_fraction=0.1)
    mc = sweep.dense_model(32, n_layers=2, seq_len=tc.seq_len)
    for seed in range(3):
        rc = train.RunConfig(task=tc, model=mc, batch_size=64, token_budget=64 * tc.seq_len * 2000, seed=seed,
                             optim=optim.AdamWConfig(peak_lr=1e-2, weight_decay=0.1, warmup_steps=50))
        r = train.run(rc)
        assert r.params_total == mc.shape.params().total
        assert r.curve_train_loss[0] > 1.0  # it starts ignorant
        assert r.train_loss < 0.5 * r.curve_train_loss[0]  # every seed learns (mean of the last 10% of steps)
        if r.held_out_loss < 0.1 and r.held_out_exact > 0.9:  # generalises to unseen sums
            break
    else:
        raise AssertionError(f"no seed generalised: last held-out loss {r.held_out_loss:.3f}, exact {r.held_out_exact:.3f}")
    assert r.flops == r.tokens * mc.shape.flops_per_token().train_exact

import pytest

from distill.kd.schedule import GanSchedule


def run_epoch(s, epoch, iters, adv=None):
    stages = []
    for _ in range(iters):
        stages.append(s.stage)
        s.after_iteration(epoch)
    s.after_epoch(epoch, adv)
    return stages


def test_full_cycle_driven_by_iterations_and_threshold():
    s = GanSchedule(adversarial_epochs=4, d_pretrain_iters=3, d_finetune_iters=2, threshold=5e-4, student_max_epochs=5)
    assert s.stage == "d_pretrain"
    # epoch 0: 3 D pre-learning iterations, then the student; adversarial loss still high -> stay
    assert run_epoch(s, 0, 5, adv=0.7) == ["d_pretrain"] * 3 + ["student"] * 2
    assert s.stage == "student"
    # epoch 1: mean adversarial loss below the threshold -> D fine-tuning
    assert run_epoch(s, 1, 5, adv=4e-4) == ["student"] * 5
    assert s.stage == "d_finetune" and s.rounds == 1
    # epoch 2: 2 fine-tuning iterations then the student again (threshold exactly not reached -> stay)
    assert run_epoch(s, 2, 5, adv=5e-4) == ["d_finetune"] * 2 + ["student"] * 3
    assert s.stage == "student"
    # epoch 3 is the last adversarial epoch -> post-learning
    run_epoch(s, 3, 5, adv=1e-4)
    assert s.stage == "post"
    assert [(h["from"], h["to"]) for h in s.history] == [
        ("d_pretrain", "student"), ("student", "d_finetune"), ("d_finetune", "student"), ("student", "d_finetune"),
        ("d_finetune", "post")]
    assert run_epoch(s, 4, 3) == ["post"] * 3 and s.stage == "post"


def test_epoch_cap_and_stages_straddling_epochs():
    s = GanSchedule(adversarial_epochs=10, d_pretrain_iters=5, d_finetune_iters=1, student_max_epochs=2)
    assert run_epoch(s, 0, 3) == ["d_pretrain"] * 3          # D pre-learning continues into the next epoch
    assert s.stage == "d_pretrain" and s.stage_iters == 3
    assert run_epoch(s, 1, 3, adv=1.0) == ["d_pretrain"] * 2 + ["student"]
    run_epoch(s, 2, 3, adv=1.0)
    assert s.stage == "d_finetune" and "cap of 2" in s.history[-1]["why"]


def test_ab_init_and_zero_length_stages_and_state_round_trip():
    s = GanSchedule(adversarial_epochs=3, d_pretrain_iters=0, ab_iters=2)
    assert s.stage == "ab_init"
    assert run_epoch(s, 0, 3, adv=1.0) == ["ab_init", "ab_init", "student"]
    clone = GanSchedule.from_state(s.state_dict())
    assert clone == s
    s2 = GanSchedule(adversarial_epochs=0)
    assert s2.stage == "post"


@pytest.mark.parametrize("adv", [None, 1.0])
def test_no_adversarial_term_uses_the_cap(adv):
    s = GanSchedule(adversarial_epochs=5, d_pretrain_iters=1, student_max_epochs=1)
    run_epoch(s, 0, 2, adv=adv)
    assert s.stage == "d_finetune"


def test_student_iteration_cap_replaces_the_epoch_cap():
    s = GanSchedule(adversarial_epochs=3, d_pretrain_iters=1, d_finetune_iters=1, student_max_epochs=1, student_max_iters=2)
    assert run_epoch(s, 0, 5, adv=1.0) == ["d_pretrain", "student", "student", "d_finetune", "student"]
    assert s.stage == "student" and s.stage_iters == 1 and s.rounds == 1       # the round goes on into epoch 1
    assert run_epoch(s, 1, 3, adv=1.0) == ["student", "d_finetune", "student"]
    assert s.rounds == 2 and "cap of 2 student iterations" in s.history[-2]["why"]
    run_epoch(s, 2, 3, adv=1e-4)        # the paper's threshold still ends a round at an epoch end
    assert s.history[-2]["to"] == "d_finetune" and "<" in s.history[-2]["why"] and s.stage == "post"

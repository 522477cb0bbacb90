"""Training that loses nothing: SIGTERM mid-epoch then ``--resume auto`` repeats the
uninterrupted run exactly; non-finite losses are skipped, then stop with a checkpoint;
corrupt checkpoints are never resumed from; bad images are named or skipped."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from plugins import LossTerm, PluginEngine
from plugins.training.checkpoint import load_checkpoint, save_checkpoint
from plugins.data.images import ImageReadError, read_image
from plugins.training.resilience import NonFiniteLossError, latest_checkpoint
from plugins import NoData
from tests.helpers import CUDA, REPO, TINY_SYNTHREID, TinyReIDNet, count_host_reads, run_tool

CONFIG = os.path.join(REPO, 'configs', 'baselines', 'resnet50_synthreid.yaml')
RUN = ['model.name', 'resnet18', 'train.max_epoch', '2', 'train.batch_size', '4', 'use_gpu', 'False',
       'data.height', '32', 'data.width', '16', 'data.workers', '2', 'train.print_freq', '1',
       'train.deterministic', 'True', 'test.batch_size', '16', *TINY_SYNTHREID]


def step_losses(output):
    """``(epoch, iteration) -> loss_x`` from the per-step log lines."""
    return {(int(e), int(i)): float(x) for e, i, x in
            re.findall(r'epoch: \[(\d+)/\d+\]\[(\d+)/\d+\].*?loss_x ([\d.]+)', output)}


@pytest.mark.parametrize('device', ['cpu', CUDA])
def test_sigterm_mid_epoch_then_resume_auto_matches_an_uninterrupted_run(tmp_path, device):
    """Exact on CPU; on a GPU exact unless the run names kernels without a deterministic
    implementation (then close)."""
    root = str(tmp_path / 'data')
    run = [*RUN, 'use_gpu', str(device == 'cuda')]  # the later value wins
    code, full = run_tool('train', '--config-file', CONFIG, '--root', root, *run,
                          'data.save_dir', str(tmp_path / 'full'), cwd=tmp_path)
    assert code == 0, full
    expected = step_losses(full)
    assert len(expected) >= 8

    save = str(tmp_path / 'cut')
    log = open(tmp_path / 'cut.txt', 'w+')
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'tools', 'train.py'),
                             '--config-file', CONFIG, '--root', root, *run, 'data.save_dir', save],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    while 'epoch: [2/2][2/' not in open(tmp_path / 'cut.txt').read():  # mid second epoch
        assert proc.poll() is None and time.time() < deadline, open(tmp_path / 'cut.txt').read()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # the whole group, loader workers included, as torchrun does
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    first = open(tmp_path / 'cut.txt').read()
    saved = re.findall(r'Checkpoint saved to "(.*?)"', first)
    assert saved and '+iter' in saved[-1] and 'Stopped by SIGTERM' in first
    stopped_at = int(re.search(r'\+iter(\d+)', saved[-1]).group(1))
    assert 'Rank-1' not in first.split('=> Start training')[-1].split('epoch: [2/2]')[-1]

    code, second = run_tool('train', '--config-file', CONFIG, '--root', root, *run,
                            'data.save_dir', save, '--resume', 'auto', cwd=tmp_path)
    assert code == 0, second
    assert 'resuming from' in second
    resumed = step_losses(second)
    assert min(resumed) == (2, stopped_at + 1)
    exact = 'without a deterministic implementation' not in full
    assert exact or device == 'cuda'
    for key, loss in {**step_losses(first), **resumed}.items():
        assert loss == pytest.approx(expected[key], rel=1e-5 if exact else 1e-2, abs=1e-6), key
    if exact:
        assert re.findall(r'Rank-1\s*:\s*([\d.]+)%', second) == re.findall(r'Rank-1\s*:\s*([\d.]+)%', full)


def test_resume_from_an_end_of_epoch_checkpoint_repeats_the_next_epoch(tmp_path):
    root, full_dir = str(tmp_path / 'data'), tmp_path / 'full'
    code, full = run_tool('train', '--config-file', CONFIG, '--root', root, *RUN, 'test.eval_freq',
                          '1', 'data.save_dir', str(full_dir), cwd=tmp_path)
    assert code == 0, full
    code, out = run_tool('train', '--config-file', CONFIG, '--root', root, *RUN, 'test.eval_freq',
                         '1', 'data.save_dir', str(tmp_path / 'again'), '--resume',
                         str(full_dir / 'model' / 'model.pth.tar-1'), cwd=tmp_path)
    assert code == 0, out
    expected, resumed = step_losses(full), step_losses(out)
    assert resumed and min(resumed)[0] == 2
    for key, loss in resumed.items():  # epoch 2: same order, same augmentation, same losses
        assert loss == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key


def _fake_engine(tmp_path, patience):
    model = TinyReIDNet(num_classes=4)
    engine = PluginEngine(NoData(4), model, torch.optim.SGD(model.parameters(), lr=0.1),
                          use_gpu=False, nonfinite_patience=patience)
    engine.save_dir = str(tmp_path)
    return engine


def test_non_finite_steps_are_skipped_then_training_stops_with_a_checkpoint(tmp_path, tiny_batch):
    engine = _fake_engine(tmp_path, patience=3)
    poisoned = {'fn': False}
    engine.loss_terms = [
        LossTerm('loss_x', 1.0, lambda e, b, o: torch.nn.functional.cross_entropy(o, b['pid'])),
        LossTerm('loss_bad', 1.0, lambda e, b, o: o.sum() * (float('nan') if poisoned['fn'] else 0.)),
    ]
    engine.set_model_mode('train')
    engine.forward_backward(tiny_batch)  # a finite step moves the weights
    before = {k: v.detach().clone() for k, v in engine.model.named_parameters()}
    momentum = {k: engine.optimizer.state[p].get('momentum_buffer') for k, p in engine.model.named_parameters()}
    poisoned['fn'] = True
    for i in range(2):
        engine.batch_idx = i
        engine.forward_backward(tiny_batch)
        params = dict(engine.model.named_parameters())
        assert all(torch.equal(v, params[k]) for k, v in before.items())  # no step taken
        engine.read_step_flags()  # the flags stay on the device until read (at print_freq)
        assert engine.skipped_steps == i + 1 and engine.nonfinite_in_a_row == i + 1
    assert all(engine.optimizer.state[p].get('momentum_buffer') is momentum[k] or torch.equal(
        engine.optimizer.state[p]['momentum_buffer'], momentum[k])
        for k, p in engine.model.named_parameters())  # the optimiser's state did not move either
    poisoned['fn'] = False
    engine.forward_backward(tiny_batch)  # a good step resets the count
    engine.read_step_flags()
    assert engine.nonfinite_in_a_row == 0 and engine.skipped_steps == 2
    poisoned['fn'] = True
    for engine.batch_idx in (4, 5, 6):  # three in a row, read once: the read finds the run
        engine.forward_backward(tiny_batch)
    with pytest.raises(NonFiniteLossError, match=r"\['loss_bad'\].*3 steps in a row") as err:
        engine.read_step_flags()
    path = os.path.join(str(tmp_path), 'model', 'model.pth.tar-0+iter7')
    assert path in str(err.value)
    ckpt = load_checkpoint(path)
    assert ckpt['iteration'] == 7 and 'rng' in ckpt and 'epoch_rng' in ckpt


@pytest.mark.parametrize('optim', ['sgd', 'rmsprop'])
def test_a_step_reads_nothing_on_the_host_with_fused_optimisers(tmp_path, tiny_batch, optim):
    """Fused kernels skip on the device flag; RMSprop (no fused kernels) must read it."""
    model = TinyReIDNet(num_classes=4)
    cls = {'sgd': torch.optim.SGD, 'rmsprop': torch.optim.RMSprop}[optim]
    engine = PluginEngine(NoData(4), model, cls(model.parameters(), lr=0.1),
                          use_gpu=False, nonfinite_patience=3)
    engine.loss_terms = [LossTerm('loss_x', 1.0, lambda e, b, o: torch.nn.functional.cross_entropy(
        o, b['pid']))]
    engine.set_model_mode('train')
    with count_host_reads() as reads:
        engine.forward_backward(tiny_batch)
    assert (reads == []) == (optim == 'sgd'), reads


def test_resume_auto_never_picks_a_corrupt_or_incomplete_checkpoint(tmp_path, capsys):
    state = {'state_dict': {'w': torch.ones(2)}}
    for name in ('model', 'critic'):
        save_checkpoint({**state, 'epoch': 2}, str(tmp_path / name))
    save_checkpoint({**state, 'epoch': 3}, str(tmp_path / 'model'))  # critic file missing
    save_checkpoint({**state, 'epoch': 3, 'iteration': 5}, str(tmp_path / 'critic'),
                    name='model.pth.tar-3+iter5')
    (tmp_path / 'model' / 'model.pth.tar-3+iter5').write_bytes(b'PK\x03\x04 truncated')
    good = str(tmp_path / 'model' / 'model.pth.tar-2')
    assert latest_checkpoint(str(tmp_path), ('model', 'critic')) == good
    out = capsys.readouterr().out
    assert 'model.pth.tar-3+iter5' in out and 'model.pth.tar-3"' in out
    assert latest_checkpoint(str(tmp_path), ('model',)) == str(tmp_path / 'model' / 'model.pth.tar-3')
    assert latest_checkpoint(str(tmp_path / 'nothing')) is None


def _tiny_dataset(tmp_path):
    """Generate the tiny synthreid once through the train script's data manager."""
    from plugins.training.launch import build_datamanager, setup_config
    cfg = setup_config(CONFIG, [*TINY_SYNTHREID, 'data.workers', '0'], root=str(tmp_path / 'data'))
    build_datamanager(cfg)
    return str(tmp_path / 'data' / 'synthreid')


def _train_images(folder):
    train = os.path.join(folder, 'bounding_box_train')
    return sorted(os.path.join(train, f) for f in os.listdir(train))


def test_corrupt_image_is_named_or_skipped_and_counted(tmp_path):
    folder = _tiny_dataset(tmp_path)
    images = _train_images(folder)
    bad = images[0]
    with open(bad, 'r+b') as f:
        f.truncate(os.path.getsize(bad) // 3)
    with pytest.raises(ImageReadError, match=re.escape(bad)):
        read_image(bad)
    args = ['--config-file', CONFIG, '--root', str(tmp_path / 'data'), 'model.name', 'resnet18',
            'train.max_epoch', '1', 'train.batch_size', '8', 'data.height', '32', 'data.width', '16',
            'data.workers', '0', 'train.print_freq', '1', 'sampler.train_sampler', 'PKSampler',
            'sampler.num_instances', '2', 'data.save_dir', str(tmp_path / 'log'), *TINY_SYNTHREID]
    code, out = run_tool('train', *args, cwd=tmp_path)
    assert code == 1 and 'Cannot read image "{}"'.format(bad) in out, out
    assert 'Traceback' not in out
    code, out = run_tool('train', *args, 'data.skip_bad_images', 'True', cwd=tmp_path)
    assert code == 0, out
    assert 'skipped images 1' in out and 'Warning (data.skip_bad_images)' in out and bad in out


def test_kernels_without_a_deterministic_implementation_are_named(capsys):
    from plugins.training.resilience import nondeterministic_kernels_reported
    message = ('upsample_bilinear2d_backward_out_cuda does not have a deterministic implementation, '
               "but you set 'torch.use_deterministic_algorithms(True, warn_only=True)'")
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with pytest.warns(UserWarning, match='another'):
            with nondeterministic_kernels_reported():
                import warnings
                warnings.warn(message)
                warnings.warn(message)
                warnings.warn('another warning passes through')
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    out = capsys.readouterr().out
    assert out.count('upsample_bilinear2d_backward_out_cuda ran without a deterministic') == 1


def test_under_fp16_a_non_finite_term_skips_the_step_even_with_finite_gradients(tmp_path, tiny_batch):
    model = TinyReIDNet(num_classes=4)
    engine = PluginEngine(NoData(4), model, torch.optim.SGD(model.parameters(), lr=0.1),
                          use_gpu=False, nonfinite_patience=3, amp='fp16')
    engine.loss_terms = [
        LossTerm('loss_x', 1.0, lambda e, b, o: torch.nn.functional.cross_entropy(o.float(), b['pid'])),
        LossTerm('loss_inf', 1.0, lambda e, b, o: o.sum().detach() * float('inf')),  # no gradient
    ]
    engine.set_model_mode('train')
    before = {k: v.detach().clone() for k, v in engine.model.named_parameters()}
    engine.forward_backward(tiny_batch)
    assert all(torch.equal(v, dict(engine.model.named_parameters())[k]) for k, v in before.items())
    engine.read_step_flags()
    assert engine.skipped_steps == 1

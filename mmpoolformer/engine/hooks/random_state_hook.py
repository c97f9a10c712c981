"""Resume with the random state a checkpoint was taken at.

mmengine seeds python ``random``, numpy and torch once, when the Runner is
built, and on ``--resume`` only re-seeds (from the checkpoint's seed) when
that differs from the config's. Either way a resumed run draws from near
the start of the seed's streams, not from where the interrupted run had
got to, so random
augmentations in the main process (mmdet's ``RandomFlip`` draws from numpy
when ``num_workers=0``), ``DropPath`` and the RoI samplers (torch) take
other draws than an uninterrupted run would, and the loss curves part.
"""
import random
from typing import Optional

import numpy as np
import torch
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

__all__ = ['RandomStateHook', 'get_random_state', 'set_random_state']

CHECKPOINT_KEY = 'random_state'


def get_random_state() -> dict:
    """The state of python ``random``, numpy's global generator and torch
    (CPU and every CUDA device), as tensors, ints, floats and strings only:
    a checkpoint holding it still loads with ``weights_only=True``."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = dict(
        python=dict(version=int(version),
                    state=torch.tensor(internal, dtype=torch.int64),
                    gauss_next=(None if gauss_next is None else
                                float(gauss_next))),
        numpy=dict(name=str(name),
                   keys=torch.from_numpy(keys.astype(np.int64)),
                   pos=int(pos), has_gauss=int(has_gauss),
                   cached_gaussian=float(cached_gaussian)),
        torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict) -> None:
    """Restore what :func:`get_random_state` returned."""
    python = state['python']
    random.setstate((python['version'],
                     tuple(int(v) for v in python['state'].tolist()),
                     python['gauss_next']))
    numpy = state['numpy']
    np.random.set_state(
        (numpy['name'], numpy['keys'].numpy().astype(np.uint32),
         numpy['pos'], numpy['has_gauss'], numpy['cached_gaussian']))
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and torch.cuda.is_available():
        cuda = state['cuda']
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Save the random state into every checkpoint and restore it on resume.

    ``before_save_checkpoint`` stores :func:`get_random_state` under the
    checkpoint's ``random_state`` key. When training resumes from that
    checkpoint (its iteration is the one the loop continues from; a
    ``load_from`` starts at 0 and is left alone) the state comes back in
    ``before_train``, after mmengine's own re-seeding in ``resume``.
    Validation during training runs between a checkpoint and the next
    training iteration and draws from torch (a ``DataLoader`` iterator
    takes a base seed even without workers), so the hook also hands the
    training stream back unchanged after each validation. With that, a
    resumed single-process run with ``num_workers=0`` repeats the
    uninterrupted run's draws.

    Not covered: dataloader worker processes (mmengine seeds them with
    ``seed + worker_id`` when they start, so with ``persistent_workers``
    their streams restart on resume) and, in distributed runs, ranks other
    than 0 (only rank 0 writes the checkpoint; the others keep mmengine's
    seeding).

    Configs list it in ``custom_hooks`` (and the module in
    ``custom_imports``)::

        custom_imports = dict(imports=[
            'mmpoolformer', 'mmpoolformer.engine.hooks.random_state_hook'])
        custom_hooks = [dict(type='RandomStateHook')]
    """
    # after every other hook's before_train: the last thing before the loop
    priority = 'LOWEST'

    def __init__(self):
        self._resumed: Optional[dict] = None
        self._training: Optional[dict] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = dict(get_random_state(),
                                          world_size=get_world_size())

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # kept for before_train: mmengine's resume may re-seed after this
        state = checkpoint.get(CHECKPOINT_KEY)
        meta = checkpoint.get('meta') or {}
        self._resumed = None if state is None else dict(
            state, iter=meta.get('iter'))

    def before_train(self, runner) -> None:
        state, self._resumed = self._resumed, None
        if state is None or not runner.iter or state['iter'] != runner.iter:
            return  # a fresh run, or load_from (fine-tuning)
        if get_rank() != 0:
            return
        set_random_state(state)
        if get_world_size() > 1:
            runner.logger.warning(
                'RandomStateHook: restored the random state of rank 0 only')
        runner.logger.info(
            f'RandomStateHook: random state restored from iter {runner.iter}')

    def before_val(self, runner) -> None:
        # validation must not shift the training stream (see above)
        self._training = get_random_state()

    def after_val(self, runner) -> None:
        state, self._training = self._training, None
        if state is not None:
            set_random_state(state)

"""Stop training at the first non-finite loss or gradient."""
import warnings
from typing import Dict, List

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper
from mmengine.registry import HOOKS

__all__ = ['NonFiniteCheckHook']


def _format(values: Dict[str, torch.Tensor]) -> str:
    return ', '.join(f'{name}={float(value.detach()):.4g}'
                     for name, value in values.items())


def _all_ranks(ok: bool, device) -> bool:
    """``ok`` on every rank (one tiny all-reduce when distributed), so
    that all ranks stop together instead of the others waiting in the
    backward pass's gradient all-reduce."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1):
        return ok
    flag = torch.tensor([0. if ok else 1.], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return not bool(flag.item())


@HOOKS.register_module()
class NonFiniteCheckHook(Hook):
    """Stop at once, with a message, when a loss or a gradient is NaN/inf.

    mmdet's ``CheckInvalidLossHook`` looks at the total loss every
    ``interval`` iterations, after the optimizer has already stepped on it.
    This hook checks every iteration, *before* the damage:

    * each loss term, after the model sums them and before ``backward``
      (in distributed runs every rank stops, with a message, when one has
      a non-finite loss: one small all-reduce an iteration, instead of the
      others waiting in the gradient all-reduce until the launcher kills
      them or the timeout ends them);
    * the gradients, after ``backward`` and before the optimizer step
      (skipped while a float16 loss scaler is active: it skips such steps
      itself, by design).

    Either raises ``FloatingPointError`` naming the iteration and the
    non-finite loss terms (or parameters), so no parameter is updated from
    that state and no checkpoint is written after it. For a non-finite loss
    the message also names the first module whose forward output was
    non-finite (the batch is run once more, without gradients, with a
    check on every module); for gradients it lists the parameters in model
    order and runs the batch once more under autograd's anomaly mode, which
    names the first backward function that returned NaN and the forward
    line that made it. ``tools/train.py`` adds the hook to every run unless
    the config lists it already.

    Args:
        check_grads (bool): Also check gradients. Defaults to True.
    """
    priority = 'VERY_HIGH'

    def __init__(self, check_grads: bool = True):
        self.check_grads = check_grads

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self._batch = data_batch  # a reference, for _locate only

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self._batch = None

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) \
            else runner.model
        self._wrap_parse_losses(runner, model)
        wrapper = runner.optim_wrapper
        if self.check_grads and isinstance(wrapper, OptimWrapper):
            self._wrap_step(runner, model, wrapper)

    @staticmethod
    def _where(runner) -> str:
        return (f'iteration {runner.iter + 1} (epoch {runner.epoch + 1})')

    def _wrap_parse_losses(self, runner, model) -> None:
        # Instance attributes: this model and wrapper only, nothing global.
        if getattr(model.parse_losses, '_non_finite_checked', False):
            return
        parse_losses = model.parse_losses

        def checked_parse_losses(losses):
            loss, log_vars = parse_losses(losses)
            finite = bool(torch.isfinite(loss).all())
            if not _all_ranks(finite, loss.device):
                if finite:  # this rank is fine; stop with the one that is not
                    raise FloatingPointError(
                        f'Non-finite loss on another rank at '
                        f'{self._where(runner)}; this rank stops with it '
                        'before the backward pass (its message names the '
                        'terms).')
                bad = {k: v for k, v in log_vars.items()
                       if k != 'loss' and not bool(torch.isfinite(v).all())}
                raise FloatingPointError(
                    f'Non-finite loss at {self._where(runner)}: '
                    f'{_format(bad) or _format(dict(loss=loss))} (all '
                    f'terms: {_format(log_vars)}). '
                    f'{self._locate(runner, model)}Training stopped before '
                    'the backward pass; no parameter was updated from it '
                    'and no checkpoint was written after it. Resume from '
                    'the last checkpoint with a lower lr or gradient '
                    'clipping (optim_wrapper.clip_grad), and check the '
                    'data of this iteration.')
            return loss, log_vars

        checked_parse_losses._non_finite_checked = True
        model.parse_losses = checked_parse_losses

    def _wrap_step(self, runner, model, wrapper) -> None:
        # mmengine's param schedulers wrap ``step`` (an instance attribute
        # too); this goes on top of whatever is there
        if getattr(wrapper.step, '_non_finite_checked', False):
            return
        step = wrapper.step
        names = {id(p): n for n, p in model.named_parameters()}

        def checked_step(**kwargs):
            scaler = getattr(wrapper, 'loss_scaler', None)
            if not (scaler is not None and scaler.is_enabled()):
                bad = self._non_finite_grads(wrapper, names)
                if bad:
                    raise FloatingPointError(
                        f'Non-finite gradients at {self._where(runner)} in '
                        f'{len(bad)} parameters, e.g. {", ".join(bad[:5])}, '
                        f'while the loss was finite. '
                        f'{self._locate_backward(runner, model)}'
                        'Training stopped before '
                        'the optimizer step; no parameter was updated from '
                        'it and no checkpoint was written after it. Resume '
                        'from the last checkpoint with a lower lr or '
                        'gradient clipping (optim_wrapper.clip_grad).')
            return step(**kwargs)

        checked_step._non_finite_checked = True
        wrapper.step = checked_step

    def _locate(self, runner, model) -> str:
        """Run the batch again (no gradients, same autocast) and name the
        first module whose output is non-finite although its inputs are
        finite: the module (or, for a parent, its own code between its
        submodules) that made the value."""
        batch, self._batch = getattr(self, '_batch', None), None
        if batch is None:
            return ''
        found, handles = [], []

        def check(module, args, output, name):
            if found:
                return
            outputs = output if isinstance(output, (list, tuple)) \
                else [output]
            inputs = [a for a in args if isinstance(a, torch.Tensor)
                      and a.is_floating_point()]
            if not all(bool(torch.isfinite(a).all()) for a in inputs):
                return  # made upstream: the module that made it reports
            for out in outputs:
                if isinstance(out, torch.Tensor) and out.is_floating_point() \
                        and not bool(torch.isfinite(out).all()):
                    found.append(
                        f'{name} ({type(module).__name__}, output '
                        f'{str(out.dtype)[6:]} {tuple(out.shape)}' + (
                            f', from finite {str(inputs[0].dtype)[6:]} '
                            'input, absmax '
                            f'{inputs[0].detach().float().abs().max():.4g}'
                            if inputs else '') + ')')
                    return

        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(
                    lambda m, a, o, name=name: check(m, a, o, name)))
        try:
            with torch.no_grad(), runner.optim_wrapper.optim_context(model):
                data = model.data_preprocessor(batch, True)
                model._run_forward(data, mode='loss')
        except Exception as error:  # noqa: BLE001  diagnosis only
            return f'(Re-running the batch to locate it failed: {error}.) '
        finally:
            for handle in handles:
                handle.remove()
        if not found:
            return ('Running the same batch again gave finite outputs: '
                    'the forward pass is not reproducible here (a kernel '
                    'that reads uninitialized memory, or random layers). ')
        return f'First non-finite forward output: {found[0]}. '

    def _locate_backward(self, runner, model) -> str:
        """Run the batch's forward and backward again under autograd's
        anomaly mode, which stops at the first backward function that
        returns NaN and names the forward line that made it."""
        batch, self._batch = getattr(self, '_batch', None), None
        if batch is None:
            return ''
        model.zero_grad(set_to_none=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            try:
                with torch.autograd.detect_anomaly(check_nan=True):
                    with runner.optim_wrapper.optim_context(model):
                        data = model.data_preprocessor(batch, True)
                        losses = model._run_forward(data, mode='loss')
                        loss, _ = model.parse_losses(losses)
                    loss.backward()
            except RuntimeError as error:
                where = [line.strip() for w in caught
                         for line in str(w.message).splitlines()
                         if line.strip().startswith('File ')]
                return (f'Autograd anomaly mode on the same batch: '
                        f'{str(error).splitlines()[0]}'
                        + (f' Forward call: {where[-1]}.' if where else '')
                        + ' ')
            except Exception as error:  # noqa: BLE001  diagnosis only
                return (f'(Re-running the batch to locate it failed: '
                        f'{error}.) ')
        return ('Autograd anomaly mode found no backward function returning '
                'NaN on the same batch: the gradient is not reproducible '
                '(a kernel that reads uninitialized memory?) or was made by '
                'a gradient hook. ')

    @staticmethod
    def _non_finite_grads(wrapper, names) -> List[str]:
        grads = [(p, p.grad) for group in wrapper.optimizer.param_groups
                 for p in group['params'] if p.grad is not None]
        if not grads:
            return []
        norms = torch._foreach_norm([g for _, g in grads])
        if bool(torch.isfinite(torch.stack(norms)).all()):
            return []
        return [names.get(id(p), '?') for (p, _), n in zip(grads, norms)
                if not bool(torch.isfinite(n))]

"""Soak run: train a config for a while, sampling the memory it holds.

    python tools/analysis_tools/soak.py CONFIG --work-dir /tmp/soak \\
        [--minutes 35] [--interval 15] [-- TRAIN_ARGS ...]

Runs ``nice -n 19 python tools/train.py CONFIG --work-dir WORK_DIR
TRAIN_ARGS`` (output in WORK_DIR/train.log), reads VmRSS of the training
process and of its children (dataloader workers) from /proc every INTERVAL
seconds into WORK_DIR/rss.csv with the epoch the log shows, stops the run
after MINUTES and prints, for each epoch, the largest RSS seen and the RSS
right after its validation, and the change from the first evaluation to
the last. Linux only.
"""
import argparse
import csv
import os
import re
import signal
import subprocess
import sys
import time

TRAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'train.py')
EPOCH = re.compile(rb'Epoch\((train|val)\) \[(\d+)\]')
EVALUATED = re.compile(rb'Epoch\(val\) \[(\d+)\]\[\d+/\d+\]\s+coco/')


def rss_mb(pid):
    """VmRSS of ``pid`` in MB, 0 when it is gone."""
    try:
        with open(f'/proc/{pid}/status') as file:
            for line in file:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.


def children(pid):
    found = []
    for task in os.listdir(f'/proc/{pid}/task'):
        try:
            with open(f'/proc/{pid}/task/{task}/children') as file:
                found += [int(child) for child in file.read().split()]
        except OSError:
            pass
    return found


def last_epoch(log_path):
    """(phase, epoch) of the last training/validation line, and the
    epochs whose validation has finished."""
    with open(log_path, 'rb') as file:
        text = file.read()
    phases = EPOCH.findall(text)
    phase = (phases[-1][0].decode(), int(phases[-1][1])) if phases else (
        'start', 0)
    return phase, {int(e) for e in EVALUATED.findall(text)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--minutes', type=float, default=35)
    parser.add_argument('--interval', type=float, default=15)
    argv = sys.argv[1:]
    split = argv.index('--') if '--' in argv else len(argv)
    args, train_args = parser.parse_args(argv[:split]), argv[split + 1:]
    os.makedirs(args.work_dir, exist_ok=True)
    log_path = os.path.join(args.work_dir, 'train.log')
    with open(log_path, 'wb') as log:
        process = subprocess.Popen(
            ['nice', '-n', '19', sys.executable, TRAIN, args.config,
             '--work-dir', args.work_dir, *train_args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    start, rows, after_val = time.time(), [], {}
    with open(os.path.join(args.work_dir, 'rss.csv'), 'w') as file:
        writer = csv.writer(file)
        writer.writerow(['seconds', 'main_mb', 'workers_mb', 'workers',
                         'phase', 'epoch'])
        while process.poll() is None and \
                time.time() - start < args.minutes * 60:
            time.sleep(args.interval)
            workers = children(process.pid) if process.poll() is None else []
            (phase, epoch), evaluated = last_epoch(log_path)
            row = [round(time.time() - start), round(rss_mb(process.pid), 1),
                   round(sum(rss_mb(w) for w in workers), 1), len(workers),
                   phase, epoch]
            rows.append(row)
            writer.writerow(row)
            file.flush()
            for done in evaluated - set(after_val):
                after_val[done] = row
    if process.poll() is None:  # time is up: stop the run we started
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    report(rows, after_val, process.returncode)


def report(rows, after_val, returncode):
    print(f'training exited with {returncode}; {len(rows)} samples')
    print('epoch  max main MB  max workers MB  after val: t s  main  workers')
    for epoch in sorted({row[5] for row in rows}):
        mine = [row for row in rows if row[5] == epoch]
        val = after_val.get(epoch)
        val_text = (f'{val[0]:>14}  {val[1]:>5.0f}  {val[2]:>7.0f}'
                    if val else '')
        print(f'{epoch:>5}  {max(r[1] for r in mine):>11.0f}  '
              f'{max(r[2] for r in mine):>14.0f}  {val_text}')
    if len(after_val) >= 2:
        first, last = (after_val[e] for e in (min(after_val),
                                              max(after_val)))
        print(f'after validation, epoch {min(after_val)} -> '
              f'{max(after_val)}: main {last[1] - first[1]:+.0f} MB, '
              f'workers {last[2] - first[2]:+.0f} MB')


if __name__ == '__main__':
    main()

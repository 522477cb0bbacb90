"""``plugins.host.allocator.keep_freed_host_memory``: freed step buffers stay with the process."""
import os
import platform
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc mallopt only')

PROBE = r'''
import sys
import torch
from plugins.host.allocator import keep_freed_host_memory

def rss_mib():
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith('VmRSS:')) / 1024

applied = keep_freed_host_memory() if sys.argv[1] == 'keep' else False
x = torch.ones(16 << 18)  # 16 MiB of float32, touched
held = rss_mib()
del x
print(applied, held - rss_mib())
'''


def released_after_free(mode, **env):
    clean = {k: v for k, v in os.environ.items()  # whatever allocator tuning the caller has
             if not k.startswith('MALLOC_') and k not in ('GLIBC_TUNABLES', 'LD_PRELOAD')}
    out = subprocess.run([sys.executable, '-c', PROBE, mode], cwd=REPO, check=True,
                         capture_output=True, text=True,
                         env={**clean, 'PYTHONPATH': REPO, **env}).stdout.split()
    return out[0] == 'True', float(out[1])


def test_freed_buffer_is_kept_for_reuse():
    applied, released = released_after_free('keep')
    assert applied and released < 2


def test_glibc_defaults_return_the_buffer_to_the_kernel():
    applied, released = released_after_free('default')
    assert not applied and released > 12


@pytest.mark.parametrize('env', [{'MALLOC_TRIM_THRESHOLD_': '131072'},
                                 {'GLIBC_TUNABLES': 'glibc.malloc.trim_threshold=131072'},
                                 {'LD_PRELOAD': '/nonexistent/libjemalloc.so.2'}],
                         ids=['malloc-env', 'tunables', 'preload'])
def test_user_allocator_settings_win(env):
    applied, released = released_after_free('keep', **env)
    assert not applied and released > 12

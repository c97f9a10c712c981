import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
# What OpenMMLab packages ship in <package>/.mim/ for mim (``mim train
# mmpoolformer CONFIG`` finds tools/train.py and the configs there) and for
# mmpoolformer.get_config_path in an installed copy.
MIM_FILES = ('configs', 'tools', 'model-index.yml')


class BuildPyWithMim(build_py):
    """build_py that also copies MIM_FILES into the build as
    ``mmpoolformer/.mim/`` (mmdet's add_mim_extension copies them into the
    source tree instead; here the checkout stays clean). Editable installs
    skip it: they read configs and tools from the checkout."""

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            return
        target = Path(self.build_lib) / 'mmpoolformer' / '.mim'
        shutil.rmtree(target, ignore_errors=True)  # no stale files
        target.mkdir(parents=True)
        for name in MIM_FILES:
            source = HERE / name
            if source.is_dir():
                shutil.copytree(source, target / name,
                                ignore=shutil.ignore_patterns(
                                    '__pycache__', '*.py[cod]'))
            else:
                shutil.copyfile(source, target / name)


def requirements(name):
    lines = (HERE / 'requirements' / f'{name}.txt').read_text().splitlines()
    return [line.split('#')[0].strip() for line in lines
            if line.split('#')[0].strip()]


version = {}
exec((HERE / 'mmpoolformer' / 'version.py').read_text(), version)

setup(
    name='mmpoolformer',
    version=version['__version__'],
    description='PoolFormer backbone for mmdet 3.x and mmsegmentation 1.x',
    long_description=(HERE / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.8',
    packages=find_packages(include=['mmpoolformer', 'mmpoolformer.*']),
    # torch is deliberately unpinned: an installed (CUDA) build is kept.
    install_requires=['torch>=1.13'] + requirements('runtime') +
    requirements('mminstall'),
    extras_require={
        'det': requirements('det'),
        'seg': requirements('seg'),
        'all': requirements('det') + requirements('seg'),
        'tests': requirements('tests'),
        'export': requirements('export'),
    },
    cmdclass=dict(build_py=BuildPyWithMim),
    zip_safe=False,
)

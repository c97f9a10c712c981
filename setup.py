from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


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
    zip_safe=False,
)

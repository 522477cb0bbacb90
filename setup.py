from setuptools import find_packages, setup

setup(
    name='reid-plugins',
    version='0.1.0',
    description='Plugin layer and method projects (CASN, SCAL, RGA, API-Net, DG-Net) for torchreid',
    python_requires='>=3.9',
    packages=find_packages(include=['plugins', 'plugins.*', 'projects', 'projects.*']),
    install_requires=[
        'torch>=2.1,<3',
        'torchvision>=0.16,<1',
        'torchreid==0.2.5',
        # imported by torchreid 0.2.5 without being declared by it
        'scipy>=1.9',
        'opencv-python-headless>=4.6',
        'Pillow>=9',
        'gdown>=4',
        'tb-nightly',
        'numpy>=1.23',
        'PyYAML>=6',
        'yacs>=0.1.8',
        'onnx>=1.14',
        'onnxruntime>=1.16',
        'matplotlib>=3.6',
    ],
    extras_require={'test': ['pytest>=7']},
    # Each project adds one line here: '<name> = projects.<name>'.
    entry_points={'torchreid_plugins': [
        'apinet = projects.apinet',
        'rga = projects.rga',
        'scal = projects.scal',
        'casn = projects.casn',
        'dgnet = projects.dgnet',
    ]},
)

"""RGA (Relation-Aware Global Attention, Zhang et al., CVPR 2020) for torchreid.

Registers, through ``plugins`` only:

* models ``rga_s_resnet50``, ``rga_c_resnet50``, ``rga_sc_resnet50`` (:mod:`.model`), whose
  relation embeddings are computed exactly without relation matrices (:mod:`.modules`);
* their attention maps for ``tools/visualize.py``;
* benchmark section ``rga`` (:mod:`.benchmark`): train step against the official
  computation (:mod:`.reference`) and torchreid's ResNet-50s.

Training uses the plugin layer's ``triplet`` engine (label-smoothed CE on the
post-BN logits + batch-hard triplet on the pre-BN feature, the official loss);
the official warm-up schedule is ``train.warmup_epochs``. See ``projects/rga/README.md``.
"""
import plugins
from plugins.benchmarking import register_benchmark

from . import benchmark
from .model import rga_attention_maps, rga_c_resnet50, rga_s_resnet50, rga_sc_resnet50

plugins.register_models({'rga_s_resnet50': rga_s_resnet50, 'rga_c_resnet50': rga_c_resnet50,
                         'rga_sc_resnet50': rga_sc_resnet50}, rga_attention_maps)
register_benchmark('rga', benchmark.run, benchmark.markdown)

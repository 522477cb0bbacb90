"""RGA (Relation-Aware Global Attention, Zhang et al., CVPR 2020) for torchreid.

Registers, through ``plugins`` only:

* models ``rga_s_resnet50``, ``rga_c_resnet50``, ``rga_sc_resnet50`` (:mod:`.model`), whose
  relation embeddings are computed exactly without relation matrices (:mod:`.modules`);
* their attention maps for ``tools/visualize.py``;
* benchmark section ``rga`` (:mod:`.benchmark`): train step against the official
  computation (:mod:`.reference`) and torchreid's ResNet-50s;
* official check ``rga`` (:mod:`.official`) for ``tools/check_official.py``: ours against
  the official model imported from the user's clone (only when the tool runs).

Training uses the plugin layer's ``triplet`` engine (label-smoothed CE on the
post-BN logits + batch-hard triplet on the pre-BN feature, the official loss);
the official warm-up schedule is ``train.warmup_epochs``. See ``projects/rga/README.md``.
"""
import plugins

from .model import rga_attention_maps, rga_c_resnet50, rga_s_resnet50, rga_sc_resnet50

plugins.register_models({'rga_s_resnet50': rga_s_resnet50, 'rga_c_resnet50': rga_c_resnet50,
                         'rga_sc_resnet50': rga_sc_resnet50}, rga_attention_maps)
plugins.register_benchmark('rga', 'projects.rga.benchmark:run', 'projects.rga.benchmark:markdown')
# files that identify a clone; the check's module is imported only when the tool runs it
plugins.register_official_check('rga', 'microsoft/Relation-Aware-Global-Attention-Networks',
                                ['reid/models/rga_model.py', 'reid/models/models_utils/rga_modules.py',
                                 'reid/models/models_utils/rga_branches.py'], 'projects.rga.official:run')

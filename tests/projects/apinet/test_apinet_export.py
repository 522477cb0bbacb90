"""ONNX export of API-Net: the inference graph only, with PyTorch parity."""
import onnx
import pytest
import torch
from onnx import numpy_helper

import plugins
from plugins.export import (check_parity, export_onnx, training_only_initializers,
                            training_only_parameters)

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.mark.parametrize('eval_feature', ['pooled', 'bnneck'])
def test_export_parity_and_no_api_module_in_the_graph(tmp_path, eval_feature):
    torch.manual_seed(0)
    model = plugins.build_model('apinet_resnet50', 5, loss='triplet', pretrained=False,
                                eval_feature=eval_feature)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for _ in range(2):
            model(torch.randn(8, 3, 32, 16))
    model.eval()
    path = export_onnx(model, str(tmp_path / 'apinet.onnx'), 32, 16, MEAN, STD,
                       model_name='apinet_resnet50')
    batches = [torch.randn(n, 3, 32, 16, generator=torch.Generator().manual_seed(n)) for n in (1, 3)]
    report = check_parity(model, path, batches)
    assert report['feature_dim'] == 2048 and report['max_rel_diff'] <= 1e-4

    # the API module and the classifier are training-only, and none of them is in the graph
    example = torch.randn(2, 3, 32, 16)
    training_only = set(training_only_parameters(model, example))
    assert {'api.mutual.0.weight', 'api.mutual.2.weight', 'head.classifier.1.weight'} <= training_only
    assert not any(name.startswith('trunk.') for name in training_only)
    assert ('head.neck.weight' in training_only) == (eval_feature == 'pooled')
    assert training_only_initializers(model, path, example) == []
    graph = onnx.load(path).graph
    api_shapes = {tuple(p.shape) for p in model.api.parameters() if p.dim() == 2}
    api_shapes |= {s[::-1] for s in api_shapes}
    for init in graph.initializer:
        assert tuple(numpy_helper.to_array(init).shape) not in api_shapes, init.name

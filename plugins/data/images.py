"""Reading dataset images: a bad file is named, never retried forever.

torchreid's ``read_image`` retries an ``IOError`` in an endless loop, so one
truncated JPEG hangs training. :func:`read_image` decodes the whole file at
once and raises :class:`ImageReadError` naming it. With
``data.skip_bad_images`` a bad **training** image is replaced by the next
readable image of the same identity (the batch keeps its PK composition), a
warning names it, and the engine logs how many were replaced; query and gallery
images always raise, since silently changing a test set would change its
metrics. The flag lives on the dataset object (``dataset.skip_bad_images``), so
it reaches loader workers however they are started.
"""
import os.path as osp
import re

from PIL import Image
from torchreid.reid.data.datasets import dataset as host_dataset


class ImageReadError(OSError):
    """An image file is missing, truncated or not an image (the message names it)."""


def read_image(path):
    """The RGB image at ``path``, fully decoded; :class:`ImageReadError` if it cannot be read."""
    if not osp.isfile(path):
        raise ImageReadError('Image file not found: "{}"'.format(path))
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here rather than mid-transform
            return img.convert('RGB')
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageReadError(
            'Cannot read image "{}" ({}: {}). Replace or delete the file, or set '
            'data.skip_bad_images True to skip unreadable training images.'.format(
                path, type(err).__name__, err)) from None


def original_message(err):
    """The message of an :class:`ImageReadError`, without the DataLoader's re-raise wrapping.

    A worker's exception comes back as "Caught ImageReadError in DataLoader worker
    process 0. Original Traceback ...": the last line holds our message.
    """
    match = re.search(r'ImageReadError: (.*)\s*$', str(err))
    return match.group(1) if match else str(err)


def _same_identity_indices(dataset, index):
    if getattr(dataset, '_indices_by_pid', None) is None:
        by_pid = {}
        for i, item in enumerate(dataset.data):
            by_pid.setdefault(item[1], []).append(i)
        dataset._indices_by_pid = by_pid
    idxs = dataset._indices_by_pid[dataset.data[index][1]]
    start = idxs.index(index)
    return idxs[start:] + idxs[:start]


def _read_training_image(dataset, index):
    """``(image, item index used, images replaced)`` for a training sample."""
    if not getattr(dataset, 'skip_bad_images', False):
        return read_image(dataset.data[index][0]), index, 0
    errors = []
    for candidate in _same_identity_indices(dataset, index):
        try:
            return read_image(dataset.data[candidate][0]), candidate, len(errors)
        except ImageReadError as err:
            errors.append(err)
            print('Warning (data.skip_bad_images): {}'.format(err), flush=True)
    raise ImageReadError('Every image of identity {} is unreadable; first: {}'.format(
        dataset.data[index][1], errors[0]))


def image_dataset_getitem(self, index):
    """``ImageDataset.__getitem__`` with :func:`read_image` and the optional skip.

    The item also carries ``skipped_images``: how many unreadable files were
    passed over for it (0 normally).
    """
    img, used, skipped = _read_training_image(self, index)
    img_path, pid, camid, dsetid = self.data[used]
    if self.transform is not None:
        img = self._transform_image(self.transform, self.k_tfm, img)
    return {'img': img, 'pid': pid, 'camid': camid, 'impath': img_path, 'dsetid': dsetid,
            'skipped_images': skipped}


def install():
    """Point the host's image reading at ours (idempotent)."""
    host_dataset.read_image = read_image
    host_dataset.ImageDataset.__getitem__ = image_dataset_getitem

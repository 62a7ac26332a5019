"""Root filesystems: the ``host`` default, and images built or imported into a local store.

Public surface: the mount plans the engine hands the helper (isol8.images.plan), the image
store (isol8.images.store), and the safe importer every image goes through, built or
imported alike (isol8.images.extract, isol8.images.oci).
"""

from .plan import SHM_SIZE, WRITABLE_TMPFS, TmpfsSizes, host_plan, inode_cap
from .root import HOST, Root, binary_exists, resolve, validated_rootfs
from .store import Image, ImageNotFound, ImageStore

__all__ = ["HOST", "SHM_SIZE", "WRITABLE_TMPFS", "Image", "ImageNotFound", "ImageStore", "Root",
           "TmpfsSizes", "binary_exists", "host_plan", "inode_cap", "resolve",
           "validated_rootfs"]

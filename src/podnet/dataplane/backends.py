"""What the writer's users need of the nftables backends (the type, its error, the one for a
namespace), so nothing above this layer reaches nftables itself."""

from podnet.kernel.nft import Nft, NftError, backend

__all__ = ["Nft", "NftError", "backend"]

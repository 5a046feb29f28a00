"""BridgeNet, the panoramic dual multi-task network, and its configuration (nn.Modules only)."""

from model.bridgenet import BridgeNet, BridgeNetOutput
from model.config import PRESETS, BridgeNetConfig

__all__ = ["PRESETS", "BridgeNet", "BridgeNetConfig", "BridgeNetOutput"]

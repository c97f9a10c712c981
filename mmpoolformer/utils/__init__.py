"""Small helpers with no heavy imports."""
from .config import get_config, get_config_path, list_configs
from .cpu import cpu_bf16_supported

__all__ = [
    'cpu_bf16_supported', 'get_config', 'get_config_path', 'list_configs'
]

"""Small helpers with no heavy imports."""
from .config import get_config, get_config_path, list_configs

__all__ = ['get_config', 'get_config_path', 'list_configs']

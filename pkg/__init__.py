"""mmrwatch: are the firmware's MMIO ranges mapped in both efi_mm and init_mm?"""

__version__ = "0.1.0"

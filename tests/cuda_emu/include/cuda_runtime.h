// CPU emulation (tests/cuda_emu): see cuda_runtime_api.h.
#pragma once
#include "cuda_runtime_api.h"
#include "cuda_bf16.h"

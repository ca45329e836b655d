# Sourced by bench/gpu.sh and bench/gpu-ab.sh on the GPU machine: puts CUDA
# 13's libraries (libcublas, libnvrtc) on LD_LIBRARY_PATH, the toolkit's,
# else those of PyTorch's nvidia wheels ($python's).
for d in /usr/local/nvidia/lib64 /usr/local/cuda/lib64 $("$python" -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done

# Declarations of workers/engine/board.h, layout.h and rng.h for Cython (keep in sync).
#
# Every call that can throw (InvalidInput, or std::bad_alloc wherever it allocates)
# is declared `except +raise_py_error`: a C++ exception must never reach Python's
# frames unhandled (that aborts the worker).
from libc.stdint cimport int8_t, uint8_t, uint32_t, uint64_t
from libcpp.vector cimport vector


cdef extern from "rng.h" namespace "hexz" nogil:
    cdef cppclass Rng:
        Rng()
        Rng(uint64_t seed)
        void Seed(uint64_t seed)
        uint64_t operator()()
        uint32_t Below(uint32_t n)
        double Uniform()


cdef extern from "<array>" nogil:
    cdef cppclass ScorePair "std::array<int, 2>":
        int& operator[](size_t)


cdef extern from *:
    """
    #include <new>
    #include <stdexcept>
    #include "board.h"
    // Called inside a C++ catch block, one Python type per kind of failure:
    // hexz::InvalidInput (bad input) -> ValueError, out of memory -> MemoryError,
    // anything else (a bug) -> RuntimeError.
    static void hexz_raise_py_error() {
      try {
        throw;
      } catch (const hexz::InvalidInput& e) {
        PyErr_SetString(PyExc_ValueError, e.what());
      } catch (const std::bad_alloc& e) {
        PyErr_SetString(PyExc_MemoryError, e.what());
      } catch (const std::exception& e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
      } catch (...) {
        PyErr_SetString(PyExc_RuntimeError, "unknown C++ exception");
      }
    }
    """
    void raise_py_error "hexz_raise_py_error"()


cdef extern from "layout.h" namespace "hexz" nogil:
    const int kRows
    const int kCols
    const int kCells
    const int kValidCells
    const int kInitialFlags
    const int kChannels
    const int kPlayerChannels
    const int kChFlag
    const int kChValue
    const int kChBlocked
    const int kChNext
    const int kChFlagsLeft
    const int kChGrass
    const int kTensorSize
    const int kMoveTypes
    const int kPolicySize
    const int kMaskBytes
    const int kPackFlagShift
    const int kPackBlockedShift
    const int kPackValueShift
    const int kPackNextShift
    const int kGrassBytes
    const int kWireCellTypeFlag
    const int kWireCellTypeNormal


cdef extern from "board.h" namespace "hexz" nogil:
    bint IsValidCell(int r, int c)

    cdef cppclass Move:
        int8_t typ
        int8_t r
        int8_t c
        int8_t value
        int PolicyIndex()

    cdef cppclass Board:
        Board() except +raise_py_error  # the first call allocates the empty board
        Board(const Board&)
        @staticmethod
        Board Random(Rng& rng) except +raise_py_error
        @staticmethod
        Board FromTensor(const float* data) except +raise_py_error
        void Encode(int player, float* out)
        void ActionMask(int player, uint8_t* out)
        void Pack(int player, uint8_t* cells, uint8_t* grass, uint8_t* flags_left)
        void LegalMoves(int player, vector[Move]& moves) except +raise_py_error
        int NumLegalMoves(int player)
        bint HasLegalMove(int player)
        void MakeMoveChecked(int player, const Move& move) except +raise_py_error
        void MakeMove(int player, const Move& move)
        int RandomPlayout(int player_to_move, Rng& rng)
        ScorePair Score()
        int Result()
        bint GameOver()
        int FlagsLeft(int player)
        uint8_t flag(int p, int i)
        uint8_t value(int p, int i)
        uint8_t blocked(int p, int i)
        uint8_t next_value(int p, int i)
        uint8_t grass(int i)
